"""GPT-2 import and export, checked against Hugging Face `transformers` (torch, CPU) on
small random GPT2LMHeadModels made here: logits, greedy generation with and without the
KV cache, the loss on a text, and an exported run loaded back by transformers."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from scratchformer import checkpoint as ckpt, runs
from scratchformer.cli import main
from scratchformer.data.bpe import BpeTokenizer
from scratchformer.data.text import CharTokenizer
from scratchformer.decode import generate
from scratchformer.gpt2 import save_weights_run
from scratchformer.models import lm_forward
from scratchformer.runconfig import make_config
from scratchformer.tasks.lm import LMTask
from scratchformer.tasks.reverse import ReverseTask

SHAPES = {  # n_positions, n_embd, n_layer, n_head, and the options that differ from GPT-2's defaults
    "gpt2-like": dict(n_positions=64, n_embd=32, n_layer=2, n_head=4),  # dropout 0.1, gelu_new, tied
    "untied-gelu-inner": dict(n_positions=80, n_embd=48, n_layer=3, n_head=2, n_inner=80, activation_function="gelu",
                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False,
                              layer_norm_epsilon=1e-6),
}


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """vocab.json and merges.txt of a 300-symbol byte-level BPE learned on a small text."""
    d = tmp_path_factory.mktemp("bpe")
    text = ("the quick brown fox jumps over the lazy dog. " * 40 + "ROMEO: O, she doth teach the torches!\n" * 20)
    tok = BpeTokenizer.train([text], 300)
    tok.save_vocab_merges(d)
    (d / "text.txt").write_text(text)
    return d, len(tok)


def hf_folder(path, bpe_files, seed=0, **config):
    """A random GPT2LMHeadModel saved as a Hugging Face folder, its weights, biases and
    gains all perturbed (GPT-2's own init has zero biases and unit gains, which would
    leave their import untested). Returns (folder, model)."""
    src, vocab = bpe_files
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, bos_token_id=None, eos_token_id=None, **config)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(src / f, path / f)
    return path, model


def cli(capsys, *args):
    """(exit code, stdout, stderr) of the command line, run in this process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def import_run(tmp_path_factory, bpe_files, shape):
    d = tmp_path_factory.mktemp(shape)
    folder, model = hf_folder(d / "hf", bpe_files, **SHAPES[shape])
    assert main(["import", "gpt2", str(folder), "--out", str(d / "run")]) == 0
    return d / "run", model, shape


@pytest.fixture(scope="module", params=list(SHAPES))
def imported(request, tmp_path_factory, bpe_files):
    """(run folder, transformers model, shape name) of an imported random GPT-2."""
    return import_run(tmp_path_factory, bpe_files, request.param)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, bpe_files):
    """The run folder of an imported GPT-2 of the first shape."""
    return import_run(tmp_path_factory, bpe_files, "gpt2-like")[0]


def ours(run):
    task, params, _ = runs.load(run)
    return task, params


def test_import_gives_the_logits_of_transformers(imported):
    run, model, shape = imported
    task, params = ours(run)
    t = SHAPES[shape]["n_positions"]
    ids = np.random.default_rng(1).integers(0, task.cfg.model.vocab_size, (2, t))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    # transformers computes in float32; the run trained with the preset's products (auto:
    # bfloat16 ones on a CPU with AMX), and its exported weights are the same numbers.
    got, _ = lm_forward(params, jnp.asarray(ids), cfg=dataclasses.replace(task.cfg.model, products="float32"))
    assert np.abs(np.asarray(got) - want).max() < 1e-4
    assert np.abs(want).max() > 1.0  # logits that differ between tokens: the check has teeth


def test_import_records_gpt2s_settings_as_config_values(imported):
    run, model, shape = imported
    m = ours(run)[0].cfg.model
    c = model.config
    assert (m.n_layer, m.n_head, m.d_model, m.block_size, m.vocab_size) == (
        c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size)
    assert m.d_ff == (c.n_inner or 4 * c.n_embd) and m.ln_eps == c.layer_norm_epsilon
    assert m.activation == {"gelu_new": "gelu_tanh", "gelu": "gelu"}[c.activation_function]
    assert m.tie_embeddings == c.tie_word_embeddings and m.dropout == c.resid_pdrop
    assert m.products == "float32"  # as transformers computes, whatever the machine (model.products)


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_greedy_generation_matches_transformers(imported, use_cache):
    run, model, _ = imported
    task, params = ours(run)
    prompt = task.tokenizer.encode("ROMEO: O, she")
    n = 50
    with torch.no_grad():
        want = model.generate(torch.tensor(prompt)[None], max_new_tokens=n, do_sample=False, use_cache=True,
                              pad_token_id=0)[0].numpy()
    got = generate(params, task.cfg.model, prompt, n, temperature=0.0, use_cache=use_cache)
    assert len(want) == len(prompt) + n
    assert list(got) == list(want)


def test_loss_on_a_text_matches_transformers(imported, bpe_files):
    run, model, _ = imported
    task, params = ours(run)
    block = task.cfg.model.block_size
    ids = task.tokenizer.encode((bpe_files[0] / "text.txt").read_text())[: block + 1]
    loss, n, _ = task.loss_on(params, ids)
    with torch.no_grad():
        logits = model(torch.tensor(ids[:block])[None]).logits[0]
        want = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:], dtype=torch.long)).item()
    assert n == block
    assert abs(loss - want) < 1e-5


@pytest.mark.parametrize("n", [37, 2], ids=["shorter-than-the-context", "two-tokens"])
def test_eval_of_a_text_shorter_than_the_context_matches_transformers(imported, bpe_files, tmp_path, capsys, n):
    """A text of fewer tokens than the model's positions is scored in one shorter window,
    as transformers scores input_ids=labels: the mean over its n - 1 targets, each
    predicted from all the tokens before it; bits per byte over the bytes of those targets."""
    run, model, _ = imported
    task, _ = ours(run)
    ids = task.tokenizer.encode((bpe_files[0] / "text.txt").read_text())[:n]
    short = tmp_path / "short.txt"
    short.write_text(task.tokenizer.decode(ids))
    assert list(task.tokenizer.encode(short.read_text())) == list(ids) and n < task.cfg.model.block_size
    with torch.no_grad():
        input_ids = torch.tensor(ids, dtype=torch.long)[None]
        want = model(input_ids, labels=input_ids).loss.item()
    code, out, err = cli(capsys, "eval", run, "--data", short, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["tokens"] == n - 1 and abs(got["loss"] - want) < 1e-5
    target_bytes = len(task.tokenizer.decode(ids[1:]).encode("utf-8"))  # an ASCII text: decodes piece by piece
    assert got["bits_per_byte"] == pytest.approx(want * (n - 1) / np.log(2) / target_bytes, rel=1e-5)


def test_eval_of_a_one_token_text_is_one_line(small_run, tmp_path, capsys):
    one = tmp_path / "one.txt"
    one.write_text("t")
    code, out, err = cli(capsys, "eval", small_run, "--data", one)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert f"--data {one} has 1 token; scoring needs at least 2" in err


def test_an_imported_run_samples_evaluates_and_plots(small_run, bpe_files, capsys):
    run, text = small_run, bpe_files[0] / "text.txt"
    code, out, err = cli(capsys, "eval", run, "--data", text, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["bits_per_byte"] > 0 and result["tokens"] > 0
    code, out, err = cli(capsys, "sample", run, "--prompt", "ROMEO:", "--tokens", "20", "--temperature", "0")
    assert code == 0 and out.startswith("ROMEO:"), err
    code, out, err = cli(capsys, "eval", run)
    assert code == 2 and "imported model" in err and "--data" in err
    code, out, err = cli(capsys, "plot", run)
    assert code == 0, err
    assert (run / "attention.png").is_file() and not (run / "loss.png").exists()
    code, out, err = cli(capsys, "plot", run, run, "--out", run.parent / "c.png")
    assert code == 2 and "has no metrics.jsonl: weights only (an imported model)" in err, err


def test_export_loads_in_transformers_with_the_same_logits(imported, tmp_path):
    run, model, shape = imported
    task, params = ours(run)
    assert main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = np.random.default_rng(2).integers(0, task.cfg.model.vocab_size, (1, SHAPES[shape]["n_positions"]))
    with torch.no_grad():
        again, first = back(torch.tensor(ids)).logits.numpy(), model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_array_equal(again, first)  # the same float32 weights, the same program
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.encode("ROMEO: O, she") == task.tokenizer.encode("ROMEO: O, she").tolist()


def test_a_trained_run_exports_to_transformers(tmp_path, bpe_files, capsys):
    """A run of ours (trained a few steps, untied head, separate q/k/v matrices, a
    multi-token prediction module, which only training uses) loads in transformers and
    gives our logits."""
    data, src = tmp_path / "tokens", bpe_files[0]
    code, _, err = cli(capsys, "prepare", src / "text.txt", "--out", data, "--tokenizer", "bpe", "--gpt2",
                       src / "vocab.json", src / "merges.txt")
    assert code == 0, err
    code, _, err = cli(capsys, "train", "lm", "--data", data, "--out", tmp_path / "run", "--preset", "cpu-quick",
                       "--steps", "4", "--set", "optim.warmup_steps=1", "--set", "model.tie_embeddings=false",
                       "--set", "model.fused_qkv=false", "--set", "model.mtp_depth=1", "--no-progress")
    assert code == 0, err
    assert " of them in a multi-token prediction module that only training uses; " in err
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    task, params = ours(tmp_path / "run")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = np.random.default_rng(3).integers(0, task.cfg.model.vocab_size, (2, task.cfg.model.block_size))
    with torch.no_grad():
        want = back(torch.tensor(ids)).logits.numpy()
    # transformers computes in float32; the run trained with the preset's products (auto:
    # bfloat16 ones on a CPU with AMX), and its exported weights are the same numbers.
    got, _ = lm_forward(params, jnp.asarray(ids), cfg=dataclasses.replace(task.cfg.model, products="float32"))
    assert np.abs(np.asarray(got) - want).max() < 1e-4


def test_a_character_run_exports_without_a_tokenizer_transformers_would_misread(tmp_path):
    """A character run has no tokenizer of transformers' kinds: ours goes beside the model as
    char_tokenizer.json (under transformers' name tokenizer.json, AutoTokenizer failed on it),
    and the config names no <|endoftext|> (GPT2Config's default, 50256, is outside its
    vocabulary)."""
    task = LMTask(make_config("lm", "cpu-quick", {"model.n_layer": 1}), CharTokenizer("abc \n"))
    save_weights_run(tmp_path / "run", task, task.init_params(jax.random.PRNGKey(0), task.cfg.model), {})
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["char_tokenizer.json", "config.json",
                                                                   "model.safetensors"]
    assert (tmp_path / "hf" / "char_tokenizer.json").read_text() == task.tokenizer.to_json()
    config = transformers.GPT2Config.from_pretrained(tmp_path / "hf")
    assert config.bos_token_id is None and config.eos_token_id is None and config.vocab_size == 5
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = np.array([[0, 1, 2, 3, 4, 2]])
    with torch.no_grad():
        want = back(torch.tensor(ids)).logits.numpy()
    got, _ = lm_forward(ours(tmp_path / "run")[1], jnp.asarray(ids),
                        cfg=dataclasses.replace(task.cfg.model, products="float32"))
    assert np.abs(np.asarray(got) - want).max() < 1e-4


def test_fine_tuning_starts_from_the_imported_weights(small_run, bpe_files, tmp_path, capsys):
    run, out = small_run, tmp_path / "ft"
    code, _, err = cli(capsys, "train", "lm", "--init-from", run, "--data", bpe_files[0] / "text.txt", "--out", out,
                       "--steps", "1", "--set", "model.block_size=32", "--set", "optim.lr=1e-12",
                       "--set", "optim.min_lr=0", "--set", "train.batch_size=2", "--no-progress")
    assert code == 0, err
    (_, start), (task, tuned) = ours(run), ours(out)
    assert task.cfg.train.init_from == str(run) and task.cfg.model.block_size == 32
    assert (out / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    np.testing.assert_allclose(tuned["embed"]["positions"], start["embed"]["positions"][:32], atol=1e-9)
    np.testing.assert_allclose(tuned["blocks"][1]["mlp"]["fc"]["w"], start["blocks"][1]["mlp"]["fc"]["w"], atol=1e-9)
    # The fine-tune's own config.json trains it again (its model keys are the source's).
    code, _, err = cli(capsys, "train", "lm", "--config", out, "--out", tmp_path / "again", "--dry-run",
                       "--init-from", run, "--data", bpe_files[0] / "text.txt")
    assert code == 0, err


def test_a_lora_run_evaluates_samples_and_exports_its_merged_weights(small_run, bpe_files, tmp_path, capsys):
    """LoRA adapters (q, v and the MLP's fc) trained a few steps on an imported GPT-2: the
    run's checkpoints hold the adapters alone, `eval` and `sample` use the weights merged,
    and the export loads in transformers with our merged model's logits."""
    out, text = tmp_path / "lora", bpe_files[0] / "text.txt"
    code, _, err = cli(capsys, "train", "lm", "--init-from", small_run, "--lora", "4", "--data", text, "--out", out,
                       "--steps", "3", "--set", "model.block_size=32", "--set", "optim.lr=1e-2",
                       "--set", "train.batch_size=2", "--set", "lora.targets=q,v,fc", "--no-progress")
    assert code == 0, err
    (_, base), (task, merged) = ours(small_run), ours(out)
    tensors, meta = ckpt.read(ckpt.latest(out))
    assert not [k for k in tensors if k.startswith("params.") and ".attn.q." not in k and ".attn.v." not in k
                and ".mlp.fc." not in k] and meta["base"]["path"] == str(ckpt.best(small_run).resolve())
    d = task.cfg.model.d_model
    qkv, qkv0 = merged["blocks"][0]["attn"]["qkv"]["w"], base["blocks"][0]["attn"]["qkv"]["w"]
    np.testing.assert_array_equal(qkv[:, d:2 * d], qkv0[:, d:2 * d])  # k is not a target
    assert np.abs(qkv[:, :d] - qkv0[:, :d]).max() > 1e-3 and np.abs(qkv[:, 2 * d:] - qkv0[:, 2 * d:]).max() > 1e-3
    np.testing.assert_array_equal(merged["blocks"][1]["mlp"]["proj"]["w"], base["blocks"][1]["mlp"]["proj"]["w"])
    code, eval_out, err = cli(capsys, "eval", out, "--json")
    assert code == 0 and json.loads(eval_out)["step"] == 3, err
    code, sample_out, err = cli(capsys, "sample", out, "--prompt", "ROMEO:", "--tokens", "8", "--temperature", "0")
    assert code == 0 and sample_out.startswith("ROMEO:"), err
    assert main(["export", str(out), "--out", str(tmp_path / "hf")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = np.random.default_rng(4).integers(0, task.cfg.model.vocab_size, (2, 32))
    with torch.no_grad():
        want = back(torch.tensor(ids)).logits.numpy()
    got, _ = lm_forward(merged, jnp.asarray(ids), cfg=dataclasses.replace(task.cfg.model, products="float32"))
    assert np.abs(np.asarray(got) - want).max() < 1e-4


def test_the_published_files_layout_imports_the_same(tmp_path, bpe_files, small_run, capsys):
    """GPT-2's published model.safetensors names its tensors without `transformer.` and
    carries each layer's causal-mask buffers (attn.bias, attn.masked_bias): not weights."""
    from safetensors.numpy import load_file, save_file
    folder, _ = hf_folder(tmp_path / "hf", bpe_files, **SHAPES["gpt2-like"])
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(folder / "model.safetensors").items()}
    for i in range(SHAPES["gpt2-like"]["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, folder / "model.safetensors")
    code, _, err = cli(capsys, "import", "gpt2", folder, "--out", tmp_path / "run")
    assert code == 0, err
    for a, b in zip(jax.tree.leaves(ours(tmp_path / "run")[1]), jax.tree.leaves(ours(small_run)[1])):
        np.testing.assert_array_equal(a, b)  # the same seed: the same weights as the folder small_run came from


def test_a_folder_saved_in_bfloat16_imports_its_values_in_float32(tmp_path, bpe_files, capsys):
    """save_pretrained of a bfloat16 model (numpy has no bfloat16: safetensors reads it as
    ml_dtypes'): the run holds those values in float32 and gives the model's logits."""
    folder, model = hf_folder(tmp_path / "hf", bpe_files, **SHAPES["gpt2-like"])
    model.to(torch.bfloat16).save_pretrained(folder)
    code, _, err = cli(capsys, "import", "gpt2", folder, "--out", tmp_path / "run")
    assert code == 0, err
    task, params = ours(tmp_path / "run")
    ids = np.random.default_rng(1).integers(0, task.cfg.model.vocab_size, (2, 16))
    with torch.no_grad():
        want = model.float()(torch.tensor(ids)).logits.numpy()
    got, _ = lm_forward(params, jnp.asarray(ids), cfg=task.cfg.model)
    assert np.abs(np.asarray(got) - want).max() < 1e-4
    assert task.cfg.model.products == "float32" and np.abs(want).max() > 1.0


@pytest.fixture(scope="module")
def broken_folders(tmp_path_factory, bpe_files):
    """{name: folder}: GPT-2 folders with one thing wrong each."""
    tmp_path = tmp_path_factory.mktemp("broken")
    good, _ = hf_folder(tmp_path / "good", bpe_files, **SHAPES["gpt2-like"])
    cases = {}

    def copy(name):
        d = tmp_path / name
        shutil.copytree(good, d)
        cases[name] = d
        return d

    (copy("no-merges") / "merges.txt").unlink()
    for name, change in [("bert", {"model_type": "bert"}), ("unknown-option", {"rotary_dim": 8}),
                         ("inverse-layer-scaling", {"scale_attn_by_inverse_layer_idx": True}),
                         ("relu", {"activation_function": "relu"}), ("wider", {"n_embd": 64})]:
        d = copy(name)
        c = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**c, **change}))
    return cases


@pytest.mark.parametrize("case,expected", [
    ("no-merges", "has no merges.txt"), ("bert", "model_type='bert' is not a GPT-2"),
    ("unknown-option", "does not know: rotary_dim"), ("inverse-layer-scaling", "scale_attn_by_inverse_layer_idx=True"),
    ("relu", "activation_function='relu'"), ("wider", "wte.weight has shape (300, 32), its config.json needs (300, 64)"),
])
def test_bad_gpt2_folders_give_one_line_and_no_run(tmp_path, broken_folders, case, expected, capsys):
    code, _, err = cli(capsys, "import", "gpt2", broken_folders[case], "--out", tmp_path / "run")
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


def test_the_fine_tune_presets_context_shrinks_to_a_shorter_position_table(small_run):
    """gpt2-finetune's 256 positions are more than a small run has (here 64): unasked, the
    fine-tune takes the run's own 64 rather than failing; asked for more, it is an error
    (test_bad_uses_of_an_imported_run)."""
    from scratchformer import finetune
    init = finetune.source(small_run, "lm")
    cfg = finetune.config("lm", "gpt2-finetune", {}, init, small_run)
    assert cfg.model.block_size == init.cfg.model.block_size == 64 < make_config("lm", "gpt2-finetune").model.block_size
    assert finetune.config("lm", "gpt2-finetune", {"model.block_size": "32"}, init, small_run).model.block_size == 32


def test_bad_uses_of_an_imported_run(small_run, tmp_path, capsys):
    run, rev = small_run, tmp_path / "rev"
    cfg = make_config("reverse", None, {"model.n_layer": 1, "model.d_model": 16})
    task = ReverseTask(cfg)
    save_weights_run(rev, task, task.init_params(jax.random.PRNGKey(0), task.cfg.model), {})
    rms = LMTask(make_config("lm", "cpu-quick", {"model.norm": "rmsnorm", "model.n_layer": 1}), CharTokenizer("ab"))
    save_weights_run(tmp_path / "rms", rms, rms.init_params(jax.random.PRNGKey(0), rms.cfg.model), {})
    cases = [
        (["sample", run, "--prompt", "the " * 80], "error: --prompt 'the the the the the the the th'... is 82 tokens long"),
        (["train", "lm", "--init-from", rev, "--out", tmp_path / "x"], f"--init-from {rev} is a reverse run"),
        (["train", "lm", "--init-from", run, "--out", tmp_path / "x", "--set", "model.n_layer=3"],
         "model.n_layer cannot be set with --init-from"),
        (["train", "lm", "--init-from", run, "--out", tmp_path / "x", "--set", "model.block_size=128"],
         "model.block_size=128 is longer than the position table"),
        (["train", "lm", "--init-from", tmp_path / "nothing", "--out", tmp_path / "x"], "--init-from run folder"),
        (["export", rev, "--out", tmp_path / "x"], "is a reverse run"),
        (["export", tmp_path / "rms", "--out", tmp_path / "x"], "model.norm='rmsnorm' has no GPT-2 counterpart"),
        (["export", run, "--out", run], "already exists"),
    ]
    capsys.readouterr()
    for args, expected in cases:
        code, _, err = cli(capsys, *args)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, (args, err)
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("over,named", [
    (dict(n_kv_head=2, fused_qkv=False), "model.n_kv_head=2"), (dict(head_dim=16), "model.head_dim=16"),
    (dict(activation="swiglu"), "model.activation='swiglu'"), (dict(bias=False, qkv_bias=True), "model.bias=False"),
    (dict(value_embed=True), "model.value_embed=True"), (dict(unet_skips=True), "model.unet_skips=True"),
    (dict(attn_gate=True), "model.attn_gate=True"), (dict(bigram_embed=True), "model.bigram_embed=True"),
])
def test_export_refuses_what_gpt2_does_not_have(over, named):
    """GPT-2 has one key/value head per query head, heads d_model / n_head wide, a GELU
    MLP of two layers and biases everywhere: a run with other choices is refused by name."""
    from scratchformer.config import ModelConfig
    from scratchformer.errors import UsageError
    from scratchformer.gpt2 import hf_config
    with pytest.raises(UsageError, match=f"the run's {named} has no GPT-2 counterpart"):
        hf_config(ModelConfig(vocab_size=10, **over), None)
