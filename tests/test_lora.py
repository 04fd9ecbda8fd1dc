"""LoRA (lora.py): the adapted layer against a naive reference, the merged and unmerged
views against each other, a start that leaves the model as it was, gradients and
optimizer state for the adapters alone, a killed LoRA run resuming to the identical
metrics, checkpoints without the frozen weights (and a changed base refused), and the
command line's one-line errors. GPT-2 export of a LoRA run: test_gpt2.py."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer import checkpoint as ckpt
from scratchformer import lora
from scratchformer.checkpoint import flatten
from scratchformer.cli import main
from scratchformer.config import LoraConfig, ModelConfig
from scratchformer.data.text import CharTokenizer
from scratchformer.errors import ConfigError
from scratchformer.gpt2 import save_weights_run
from scratchformer.kernels import linear
from scratchformer.layers import LowRank
from scratchformer.loop import dry_run
from scratchformer.models import init_lm, lm_forward
from scratchformer.records import precision
from scratchformer.runconfig import make_config
from scratchformer.runs import load
from scratchformer.start import training_start
from scratchformer.tasks import LMTask
from scratchformer.train import init_state, make_train_step, weights

from conftest import TINY_MODEL, run_cli

ALL = "q,k,v,out,fc,proj"


def _model(fused=True, **over):
    cfg = make_config("lm", "cpu-quick-classic", {**TINY_MODEL, "model.fused_qkv": fused, "model.products": "float32",
                                                  **{f"model.{k}": v for k, v in over.items()}})
    return dataclasses.replace(cfg.model, vocab_size=11)


def _trained_adapters(key, params, lo):
    """Adapters as after some training: B no longer zero."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(lora.init_adapters(key, params, lo))
    return jax.tree_util.tree_unflatten(tree, [0.1 * jax.random.normal(jax.random.fold_in(key, i), x.shape)
                                               if path[-1].key == "b" else x for i, (path, x) in enumerate(leaves)])


def test_one_adapted_layer_against_a_naive_reference():
    """y = x W + b + (alpha / r) x A B in float64 numpy, against the layer with its
    adapter beside it and against the merged weight."""
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 5, 12)), rng.normal(size=(12, 7)), rng.normal(size=7)
    a, bb = rng.normal(size=(12, 3)), rng.normal(size=(3, 7))
    s = 8.0 / 3
    want = x @ w + b + s * (x @ a) @ bb
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    beside = linear({"w": f32(w), "b": f32(b), "lora": LowRank(f32(a), f32(s * bb))}, f32(x))
    merged = linear({"w": f32(w + s * a @ bb), "b": f32(b)}, f32(x))
    np.testing.assert_allclose(beside, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("view", ["merge", "beside"])
def test_q_and_v_of_a_fused_matrix_are_its_first_and_third_column_blocks(view):
    """The fused qkv layer of a block against x Wqkv + b + [s x Aq Bq | 0 | s x Av Bv]."""
    m, lo = _model(), LoraConfig(rank=2, alpha=4.0)
    base = init_lm(jax.random.PRNGKey(0), m)
    ad = _trained_adapters(jax.random.PRNGKey(1), base, lo)
    p = getattr(lora, view)(base, ad, lo)["blocks"][1]["attn"]["qkv"]
    x = np.random.default_rng(2).normal(size=(3, 4, m.d_model))
    w, b = (np.asarray(base["blocks"][1]["attn"]["qkv"][k], np.float64) for k in ("w", "b"))
    q, v = ({k: np.asarray(t, np.float64) for k, t in ad["blocks"][1]["attn"][n].items()} for n in "qv")
    s = lo.alpha / lo.rank
    want = x @ w + b + np.concatenate([s * x @ q["a"] @ q["b"], np.zeros_like(x), s * x @ v["a"] @ v["b"]], -1)
    np.testing.assert_allclose(linear(p, jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_fresh_adapters_leave_the_logits_as_they_were(fused):
    """B starts at zero, so both views compute the model itself, bit for bit."""
    m = _model(fused)
    base = init_lm(jax.random.PRNGKey(0), m)
    lo = LoraConfig(rank=4, targets=ALL, dropout=0.3)
    ad = lora.init_adapters(jax.random.PRNGKey(1), base, lo)
    assert all(not np.any(t["b"]) and np.any(t["a"]) for g in ad["blocks"][0].values() for t in g.values())
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, m.vocab_size)
    want, _ = lm_forward(base, ids, cfg=m)
    np.testing.assert_array_equal(lm_forward(lora.merge(base, ad, lo), ids, cfg=m)[0], want)
    with_dropout = lora.beside(base, ad, lo, jax.random.PRNGKey(3))
    np.testing.assert_array_equal(lm_forward(with_dropout, ids, cfg=m, train=True, key=jax.random.PRNGKey(4))[0],
                                  lm_forward(base, ids, cfg=m, train=True, key=jax.random.PRNGKey(4))[0])


def test_a_is_kaiming_uniform_as_peft_and_b_zero():
    lo = LoraConfig(rank=8, targets="q,fc")
    m = _model(d_model=64, d_ff=256, n_head=4)
    ad = lora.init_adapters(jax.random.PRNGKey(0), init_lm(jax.random.PRNGKey(0), m), lo)
    for name, group in (("q", "attn"), ("fc", "mlp")):
        a = np.asarray(ad["blocks"][0][group][name]["a"])
        assert a.shape == (64, 8) and np.abs(a).max() <= 1 / 8  # torch's kaiming_uniform_(a=sqrt(5)): 1/sqrt(fan_in)
        assert abs(a.std() - 1 / 8 / np.sqrt(3)) < 0.15 / 8  # a uniform's std: bound / sqrt(3)
    assert ad["blocks"][0]["mlp"]["fc"]["b"].shape == (8, 256)


LLAMA = {"fused_qkv": False, "n_head": 4, "n_kv_head": 2, "activation": "swiglu", "norm": "rmsnorm",
         "positions": "rope", "bias": False}  # grouped-query attention: k and v narrower than q


@pytest.mark.parametrize("shape,targets", [({}, ALL), ({"fused_qkv": False}, ALL), (LLAMA, "q,k,v,out,gate,up,down")],
                         ids=["fused", "separate", "llama"])
def test_merged_and_unmerged_logits_agree(shape, targets):
    m = _model(**shape)
    base = init_lm(jax.random.PRNGKey(0), m)
    lo = LoraConfig(rank=3, alpha=6.0, targets=targets)
    ad = _trained_adapters(jax.random.PRNGKey(1), base, lo)
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, m.vocab_size)
    merged, _ = lm_forward(lora.merge(base, ad, lo), ids, cfg=m)
    beside, _ = lm_forward(lora.beside(base, ad, lo), ids, cfg=m)
    plain, _ = lm_forward(base, ids, cfg=m)
    assert np.abs(np.asarray(merged) - np.asarray(plain)).max() > 1e-2  # the adapters do something
    np.testing.assert_allclose(beside, merged, rtol=1e-5, atol=1e-5)


def test_dropout_drops_in_the_adapters_path_only():
    """With lora.dropout the training view differs from the merged weights, draws the same
    masks from the same key, and turns off outside training (evaluation merges)."""
    m = _model()
    base = init_lm(jax.random.PRNGKey(0), m)
    lo = LoraConfig(rank=2, dropout=0.5)
    ad = _trained_adapters(jax.random.PRNGKey(1), base, lo)
    ids = jax.random.randint(jax.random.PRNGKey(2), (2, 16), 0, m.vocab_size)
    one, two = (lm_forward(lora.beside(base, ad, lo, jax.random.PRNGKey(k)), ids, cfg=m)[0] for k in (5, 5))
    other = lm_forward(lora.beside(base, ad, lo, jax.random.PRNGKey(6)), ids, cfg=m)[0]
    merged = lm_forward(lora.merge(base, ad, lo), ids, cfg=m)[0]
    np.testing.assert_array_equal(one, two)
    assert not np.allclose(one, other) and not np.allclose(one, merged)


def _lora_task(text, **over):
    cfg = make_config("lm", "cpu-quick-classic", {**TINY_MODEL, "train.batch_size": 8, "train.steps": 40,
                                                  "optim.warmup_steps": 0, "train.init_from": "source",
                                                  "optim.lr": 1e-2, **over})
    return LMTask.from_text(cfg, text)


def test_only_the_adapters_train_and_hold_optimizer_state(tiny_text):
    """The optimizer state covers the adapters' leaves alone; the frozen weights are bit
    for bit the same after training; what is evaluated is their merge."""
    task = _lora_task(tiny_text, **{"lora.rank": 2, "lora.dropout": 0.1, "train.ema": 0.9})
    state = init_state(task.cfg)
    step = jax.jit(make_train_step(task.cfg))
    for i in range(3):
        state, m = step(state, task.sample_batch(task.device_data(), jax.random.PRNGKey(i), 8))
    adapters = set(flatten(state.params))
    assert adapters == {f"blocks.{i}.attn.{t}.{ab}" for i in range(2) for t in "qv" for ab in "ab"}
    assert set(flatten(state.opt_state.mu)) == set(flatten(state.opt_state.nu)) == adapters == set(flatten(state.ema))
    start = init_state(task.cfg)
    for name, x in flatten(state.base).items():
        np.testing.assert_array_equal(x, flatten(start.base)[name], err_msg=name)
    assert np.any(state.params["blocks"][0]["attn"]["q"]["b"])  # the adapters moved
    merged = weights(state, task.cfg)
    np.testing.assert_array_equal(merged["blocks"][0]["mlp"]["fc"]["w"], state.base["blocks"][0]["mlp"]["fc"]["w"])
    assert not np.array_equal(merged["blocks"][0]["attn"]["qkv"]["w"], state.base["blocks"][0]["attn"]["qkv"]["w"])


def test_the_frozen_weights_gradient_is_never_computed(tiny_text):
    """A full fine-tune's step forms a weight gradient for every matrix (its backward pass
    is about twice its forward); a LoRA step only the inputs' gradients through the
    frozen matrices and the adapters' thin products: by XLA's count, far fewer FLOPs."""
    flops = {}
    for rank in (0, 4):
        task = _lora_task(tiny_text, **{"lora.rank": rank, "model.d_model": 64, "model.d_ff": 256,
                                        "model.block_size": 32})
        state = jax.eval_shape(lambda: init_state(task.cfg))
        batch = task.sample_batch(task.device_data(), jax.random.PRNGKey(0), 8)
        cost = jax.jit(make_train_step(task.cfg)).lower(state, batch).compile().cost_analysis()
        flops[rank] = (cost if isinstance(cost, dict) else cost[0])["flops"]
    assert flops[4] < 0.75 * flops[0], flops


# ---------------------------------------------------------------- runs on the command line
SHAPE = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.d_ff": 64, "model.block_size": 16}
ARGS = ["--lora", "4", "--steps", "60", "--no-progress", "--set", "train.batch_size=8", "--set", "optim.lr=3e-3",
        "--set", "optim.min_lr=1e-4", "--set", "optim.warmup_steps=5", "--set", "train.eval_every=20",
        "--set", "train.checkpoint_every=10", "--set", "train.steps_per_call=5", "--set", "model.dropout=0.1",
        "--set", "lora.dropout=0.1", "--set", "lora.targets=q,v,fc", "--set", "data.eval_windows=8"]


@pytest.fixture(scope="module")
def source(corpus, tmp_path_factory):
    """A weights-only character LM (random weights) of the corpus' characters to adapt."""
    out = tmp_path_factory.mktemp("source") / "run"
    task = LMTask(make_config("lm", "cpu-quick-classic", SHAPE), CharTokenizer.from_text(corpus.read_text()))
    save_weights_run(out, task, task.init_params(jax.random.PRNGKey(0), task.cfg.model), {})
    return out


@pytest.fixture(scope="module")
def reference(corpus, source, tmp_path_factory):
    """The uninterrupted LoRA run the interrupted one must reproduce."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli("train", "lm", "--init-from", source, "--data", corpus, "--out", ref, *ARGS)
    assert r.returncode == 0, r.stderr
    auto = precision(ModelConfig(products="auto"))  # the LoRA preset's products, as named on this machine
    assert f"parameters (1 layers x 32, 2 heads, context 16, {auto}), frozen; LoRA trains 896 in rank-4 " \
           "adapters on q, v, fc;" in r.stderr, r.stderr
    return ref


def cli(capsys, *args):
    """(exit code, stdout, stderr) of the command line, run in this process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out):
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_a_killed_lora_run_resumes_to_the_identical_run(corpus, source, reference, tmp_path):
    """SIGKILLed twice (dropout in the model and in the adapters' path), resumed each time
    with --resume alone: metrics.jsonl and the last checkpoint are the uninterrupted
    run's, byte for byte."""
    out, resume = tmp_path / "killed", []
    for attempt in range(3):
        cmd = [sys.executable, "-m", "scratchformer", "train", "lm", "--out", str(out)]
        cmd += ["--resume"] if resume else ["--init-from", str(source), "--data", str(corpus), *ARGS]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if attempt < 2:
            target = _rows(out) + 17
            t0 = time.monotonic()
            while time.monotonic() - t0 < 120 and proc.poll() is None and _rows(out) < target:
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
            resume = True
        else:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert (out / "metrics.jsonl").read_bytes() == (reference / "metrics.jsonl").read_bytes()
    a, meta = ckpt.read(ckpt.latest(reference))
    b, _ = ckpt.read(ckpt.latest(out))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # adapters and their optimizer state only; the frozen weights are named by file and digest
    assert not [k for k in a if k.startswith(("params.embed", "base", "opt_state.mu.embed"))]
    assert {"params.blocks.0.attn.q.a", "params.blocks.0.mlp.fc.b", "opt_state.nu.blocks.0.attn.v.b"} <= a.keys()
    src = ckpt.best(source)
    assert meta["base"] == {"path": str(src.resolve()), "sha256": ckpt.read_meta(src)["sha256"]}


def test_a_lora_run_evaluates_and_samples_its_merged_weights(reference, source, corpus):
    task, params, _ = load(reference)
    (_, base, _), (tensors, _) = load(source), ckpt.read(ckpt.best(reference))
    adapters = ckpt.restore(ckpt.subtree(tensors, "params"), init_state(task.cfg).params)
    want = lora.merge(base, adapters, task.cfg.lora)
    for name, x in flatten(want).items():
        np.testing.assert_array_equal(flatten(params)[name], x, err_msg=name)
    r = run_cli("eval", reference, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == ckpt.read_meta(ckpt.best(reference))["step"] > 0
    r = run_cli("sample", reference, "--prompt", "the ", "--tokens", "12", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("the "), r.stderr


def test_a_changed_or_missing_base_is_a_one_line_error(corpus, source, tmp_path, capsys):
    """A LoRA run's checkpoints hold the adapters alone: the weights they adapt are read
    again, from the file the run recorded, and must be those it started from."""
    base = tmp_path / "base"
    task, params, _ = load(source)
    save_weights_run(base, task, params, {})
    out = tmp_path / "lora"
    code, _, err = cli(capsys, "train", "lm", "--init-from", base, "--data", corpus, "--out", out,
                       *[a if a != "60" else "10" for a in ARGS])
    assert code == 0, err
    assert cli(capsys, "eval", out, "--json")[0] == 0
    best = ckpt.best(base)
    _, meta = ckpt.read(best)
    params["ln_f"]["bias"] = params["ln_f"]["bias"] + 1.0  # other weights in the same file
    ckpt.save(best, {"params": params}, {k: v for k, v in meta.items() if k not in ("format", "sha256")})
    for command in (["eval", out], ["sample", out], ["export", out, "--out", tmp_path / "hf"],
                    ["train", "lm", "--out", out, "--resume"]):
        code, _, err = cli(capsys, *command)
        assert code == 2 and err.strip() == (
            f"scratchformer: error: {best.resolve()} changed since this LoRA run started from it (sha256 differs); "
            "its adapters fit the weights it held then"), (command, err)
    best.unlink()
    code, _, err = cli(capsys, "eval", out)
    assert code == 2 and err.strip() == (
        f"scratchformer: error: {best.resolve()}, the weights this LoRA run adapts, is gone: its checkpoints hold "
        "its adapters only and need that file as it was"), err


def test_dry_run_shows_the_smaller_state(corpus, source):
    """The same source fine-tuned whole and with LoRA: the LoRA step needs less memory
    (no optimizer moments or gradients for the frozen weights)."""
    need = {}
    for lora_rank in (None, 4):
        start = training_start("lm", init_from=str(source), lora=lora_rank, data=str(corpus), out="unused")
        need[lora_rank] = dry_run(start.task, start.out)
    assert need[4]["parameters"] == need[None]["parameters"] and need[4]["trained"] < need[None]["trained"] / 10
    assert need[4]["bytes_per_device"] < need[None]["bytes_per_device"]
    assert "LoRA trains" in need[4]["report"] and "nothing was trained or written" in need[4]["report"]


@pytest.mark.parametrize("args,message", [
    (["--lora", "4"], "error: lora.rank=4 adapts a trained model: name the run whose weights it adapts with "
                      "--init-from RUN (train.init_from)"),
    (["--lora", "0", "--init-from", "SOURCE"], "error: argument --lora: '0' must be > 0"),
    (["--lora", "x", "--init-from", "SOURCE"], "error: argument --lora: 'x' is not an integer"),
    (["--lora", "33", "--init-from", "SOURCE"], "error: lora.rank=33 is more than the 32 x 32 matrix of target 'q' "
                                                "can use; choose at most 32"),
    (["--lora", "4", "--init-from", "SOURCE", "--set", "lora.targets=q,gate"],
     "error: lora.targets names 'gate', a layer this model does not have; its blocks have q, k, v, out, fc, proj"),
    (["--lora", "4", "--init-from", "SOURCE", "--set", "lora.targets=q,ffn"],
     "error: lora.targets='q,ffn': 'ffn' is not one of the linear layers q, k, v, out, fc, proj, gate, up, down"),
    (["--lora", "4", "--init-from", "SOURCE", "--set", "lora.targets=q,q"],
     "error: lora.targets='q,q' names a layer twice"),
    (["--lora", "4", "--init-from", "SOURCE", "--set", "lora.dropout=1"], "error: lora.dropout=1.0 must be in [0, 1)"),
    (["--lora", "4", "--init-from", "SOURCE", "--set", "lora.alpha=0"], "error: lora.alpha=0.0 must be > 0"),
    (["--lora", "4", "--init-from", "SOURCE", "--set", "optim.name=muon"],
     "error: optim.name='muon' with lora.rank=4: LoRA's adapters train with optim.name=adamw"),
    (["--set", "lora.rank=-1"], "error: lora.rank=-1 must be >= 0 (0 turns LoRA off)"),
], ids=["without-init-from", "rank-0", "rank-not-a-number", "rank-above-the-width", "target-the-model-lacks",
        "unknown-target",
        "target-twice", "dropout-1", "alpha-0", "muon", "negative-rank"])
def test_bad_lora_settings_are_one_line_errors_and_write_nothing(corpus, source, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "lm", "--data", corpus, "--out", out, "--no-progress",
                       *[str(source) if a == "SOURCE" else a for a in args])
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(f"scratchformer: {message}"), err
    assert not out.exists()


def test_lora_is_for_language_models_only(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "reverse", "--set", "lora.rank=2", "--set", "train.init_from=x",
                       "--out", tmp_path / "r")
    assert code == 2 and err.strip() == (
        "scratchformer: error: lora.rank=2: LoRA adapts language models (lm runs) only; the encoder-decoder of the "
        "reverse task has no adapters"), err
    assert not (tmp_path / "r").exists()


def test_a_target_the_model_does_not_have_is_named():
    """A gated MLP (swiglu) has gate, up and down, not fc and proj."""
    params = jax.eval_shape(lambda: init_lm(jax.random.PRNGKey(0), _model(activation="swiglu")))
    with pytest.raises(ConfigError) as e:
        lora.init_adapters(jax.random.PRNGKey(0), params, LoraConfig(rank=2, targets="q,fc"))
    assert str(e.value) == ("lora.targets names 'fc', a layer this model does not have; its blocks have q, k, v, out, "
                            "gate, up, down")


def test_the_lora_section_reads_back_and_defaults_to_peft():
    lo = LoraConfig()
    assert (lo.rank, lo.alpha, lo.dropout, lo.target_names) == (0, 8.0, 0.0, ("q", "v"))
    cfg = make_config("lm", "gpt2-lora", {"lora.rank": "16", "lora.targets": "q, k,v ,out", "train.init_from": "x"})
    assert cfg.to_dict()["lora"] == {"rank": 16, "alpha": 8.0, "dropout": 0.0, "targets": "q, k,v ,out"}
    assert cfg.lora.target_names == ("q", "k", "v", "out") and cfg.optim.lr == 2e-4
    assert dataclasses.replace(cfg, lora=LoraConfig()).lora.rank == 0
