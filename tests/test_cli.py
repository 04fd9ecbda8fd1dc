"""The command line as a person uses it: help, a tiny train/eval/sample/plot of each
task, and a table of bad inputs that must each give one line on stderr, exit code 2,
no traceback and nothing half-written."""

import json
import os
import re
import shutil
import stat
import subprocess
from types import SimpleNamespace

import jax
import numpy as np
import pytest

import scratchformer
from scratchformer import checkpoint as ckpt, cli as cli_module, memory, runs
from scratchformer.cli import main
from scratchformer.config import ModelConfig
from scratchformer.data import text as text_module
from scratchformer.data.bpe import BpeTokenizer
from scratchformer.data.tokens import TokenFiles, prepare
from scratchformer.loop import fit
from scratchformer.models import lm_forward
from scratchformer.plots import _matplotlib, _plot_optimizer, lm_snippet, plot_comparison, plot_loss
from scratchformer.records import precision
from scratchformer.runconfig import cpu_note as _cpu_note, make_config, overrides_from_file
from scratchformer.runs import metrics_rows, read_metrics, read_run
from scratchformer.tasks import LMTask
from scratchformer.tasks.lm import eval_chunk
from scratchformer.train import state_template

from conftest import run_cli

LM_TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
           "--set", "model.d_ff=64", "--set", "model.block_size=16", "--set", "train.batch_size=8",
           "--set", "optim.warmup_steps=5", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20",
           "--set", "data.eval_windows=8"]
# The presets' model.products=auto as the first line names it on this machine: "float32",
# or "float32 with bfloat16 products" on a CPU with bfloat16 instructions (AMX, AVX-512 BF16).
AUTO = precision(ModelConfig(products="auto"))
REV_TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "data.max_len=6",
            "--set", "model.block_size=8", "--set", "data.eval_size=200", "--set", "train.batch_size=16",
            "--set", "optim.warmup_steps=5", "--set", "train.eval_every=20", "--set", "train.checkpoint_every=20"]


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("runs") / "lm"
    assert main(["train", "lm", "--data", str(corpus), "--steps", "40", "--out", str(out), "--no-progress",
                 *LM_TINY]) == 0
    return out


@pytest.fixture(scope="module")
def rev_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rev"
    assert main(["train", "reverse", "--steps", "40", "--out", str(out), "--no-progress", *REV_TINY]) == 0
    return out


def test_help_reads_well(capsys):
    for args in (["--help"], ["train", "--help"], ["sample", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "scratchformer train reverse" in out and "model.n_layer" in out and "cpu-quick" in out


def test_python_dash_m_and_version():
    """`python -m scratchformer` is the same program as the script, and --version prints
    the version the installed distribution reports (one source: the package)."""
    import importlib.metadata
    import sys

    r = subprocess.run([sys.executable, "-m", "scratchformer", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"scratchformer {scratchformer.__version__}"
    assert importlib.metadata.version("scratchformer") == scratchformer.__version__
    r = subprocess.run([sys.executable, "-m", "scratchformer", "eval", "/no/such/run"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.strip() == "scratchformer: error: run folder /no/such/run does not exist"


def test_lm_run_folder(lm_run, capsys):
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= {p.name for p in lm_run.iterdir()}
    rows = [json.loads(line) for line in (lm_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 41)) and [r["step"] for r in evals] == [20, 40]
    code, out, _ = cli(capsys, "eval", lm_run, "--json")
    r = json.loads(out)
    assert code == 0 and r["task"] == "lm" and r["val_tokens"] > 0
    assert abs(r["val_perplexity"] - 2.718281828 ** r["val_loss"]) < 1e-6 * r["val_perplexity"]
    code, out, _ = cli(capsys, "eval", lm_run)  # the plain line names the step it loaded, as --json does
    assert code == 0 and out.strip().startswith(f"validation loss {r['val_loss']:.4f}")
    assert out.strip().endswith(f", checkpoint of step {r['step']}")


def test_train_says_when_sample_and_eval_load_an_earlier_step(tmp_path):
    """A run whose best periodic evaluation came before its last step: train's last lines
    say which step `sample` and `eval` open, since its summary's loss is the last step's."""
    assert runs.best_checkpoint_note(tmp_path, {"steps": 40}) is None  # no best checkpoint
    (tmp_path / ckpt.CKPT_DIR).mkdir()
    ckpt.save(tmp_path / ckpt.CKPT_DIR / ckpt.BEST, {"w": np.zeros(2, np.float32)},
              {"step": 20, "best_val_loss": 1.5})
    assert runs.best_checkpoint_note(tmp_path, {"steps": 40}) == (
        "sample and eval load the best checkpoint, step 20 (periodic validation loss 1.5000), not the last "
        "step's weights")
    assert runs.best_checkpoint_note(tmp_path, {"steps": 20}) is None


def test_dry_run_sizes_a_model_and_writes_nothing(tmp_path, corpus, capsys):
    """--dry-run prints the start-up line (parameters counted independently here) and
    stops; a model too big for memory is the same one-line error as without it."""
    args = ["train", "lm", "--data", corpus, "--out", tmp_path / "run", *LM_TINY, "--set", "model.n_layer=3"]
    code, out, err = cli(capsys, *args, "--dry-run")
    cfg = LMTask.from_file(make_config("lm", "cpu-quick", {"model.n_layer": 3, "model.d_model": 32, "model.n_head": 2,
                                                           "model.d_ff": 64, "model.block_size": 16}), corpus).cfg
    n = sum(x.size for x in jax.tree.leaves(state_template(cfg).params))
    assert code == 0 and err == "" and not (tmp_path / "run").exists()
    assert out.startswith(f"lm: {n:,} parameters (3 layers x 32, 2 heads, context 16, {AUTO}); ")
    assert re.search(r"; needs ~[\d.]+ [kMG]B per device; run folder ", out)
    assert out.splitlines()[-1].startswith("dry run: the training step compiled and fits in memory")
    code, out, err = cli(capsys, *args[:-2], "--set", "model.d_model=16384", "--set", "model.d_ff=65536",
                         "--set", "model.n_layer=5", "--dry-run")
    assert code == 2 and out == "" and "needs ~" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_eval_and_sample_take_one_checkpoint_file(lm_run, capsys):
    """DIR may name a checkpoint file: that step's weights instead of the best."""
    ckpts = lm_run / "checkpoints"
    whole = [json.loads(cli(capsys, "eval", d, "--json")[1]) for d in (lm_run, ckpts / "best.safetensors",
                                                                      ckpts / "step_00000020.safetensors")]
    assert whole[0] == whole[1] and whole[2]["step"] == 20 and whole[2]["val_loss"] != whole[0]["val_loss"]
    texts = [cli(capsys, "sample", d, "--tokens", 30)[1] for d in (lm_run, ckpts / "best.safetensors",
                                                                    ckpts / "step_00000020.safetensors")]
    assert texts[0] == texts[1] != texts[2]
    code, _, err = cli(capsys, "sample", ckpts)
    assert code == 2 and err.strip().endswith(f"; the run folder is {lm_run}, or name one checkpoint file")
    code, _, err = cli(capsys, "plot", ckpts / "best.safetensors")
    assert code == 2 and "plot takes the run folder" in err


def test_progress_in_a_log_file_is_plain_lines(tmp_path, capsys, corpus):
    """With stderr not a terminal (here pytest's capture; a log file or CI alike) progress is
    a line every tenth of the run instead of a bar redrawn with carriage returns."""
    code, _, err = cli(capsys, "train", "lm", "--data", corpus, "--steps", 100, "--out", tmp_path / "run", *LM_TINY,
                       "--set", "train.steps_per_call=10")
    assert code == 0 and "\r" not in err
    _, params, _ = runs.load(tmp_path / "run")
    n = sum(x.size for x in jax.tree.leaves(params))
    assert re.fullmatch(rf"lm: {n:,} parameters \(1 layers x 32, 2 heads, context 16, {re.escape(AUTO)}\); 100 steps of "
                        rf"128 tokens; needs ~\d+ MB per device; run folder {tmp_path / 'run'}", err.splitlines()[0])
    lines = [line for line in err.splitlines() if "/100: loss=" in line]
    assert [line.split("/")[0] for line in lines] == [f"step {s}" for s in range(10, 101, 10)]
    assert "step 100/100: loss=" in lines[-1] and "tok/s=" in lines[-1]


def test_the_last_step_is_evaluated_for_the_best_checkpoint(tmp_path, capsys):
    """A run ending between evaluations (30 steps, every 20) is evaluated at its end too,
    so best.safetensors, which eval and sample load, can be the final state: early in
    training that is the best, and eval then reports what training reported."""
    out = tmp_path / "rev30"
    assert main(["train", "reverse", "--steps", "30", "--out", str(out), "--no-progress", *REV_TINY]) == 0
    err = capsys.readouterr().err  # --no-progress: no progress lines, but the start-up and evaluation lines
    assert err.startswith("reverse: ") and f"; run folder {out}\n" in err and "step 20: val_loss " in err
    assert "/30: loss=" not in err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert list(evals) == [20, 30] and evals[30] < evals[20]
    assert ckpt.read_meta(out / ckpt.CKPT_DIR / ckpt.BEST)["step"] == 30
    code, text, _ = cli(capsys, "eval", out, "--json")
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0 and json.loads(text)["exact_match"] == summary["exact_match"]
    assert json.loads(text)["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)


def test_lm_sample_is_deterministic(lm_run, capsys):
    a = cli(capsys, "sample", lm_run, "--prompt", "the ", "--tokens", "40", "--seed", "1")
    b = cli(capsys, "sample", lm_run, "--prompt", "the ", "--tokens", "40", "--seed", "1", "--no-cache")
    assert a[0] == 0 and a[1] == b[1] and a[1].startswith("the ") and len(a[1]) == 45


def test_reverse_cli(rev_run, capsys):
    code, out, _ = cli(capsys, "eval", rev_run, "--json")
    r = json.loads(out)
    assert code == 0 and r["task"] == "reverse" and r["sequences"] == 200 and 0 <= r["exact_match"] <= 1
    code, out, _ = cli(capsys, "sample", rev_run, "--input", "1 2 3")
    assert code == 0 and all(s.isdigit() for s in out.split())


def test_gpu_settings_on_a_cpu_get_a_note(tmp_path, corpus, capsys):
    gpu, f32, bf16 = (make_config("lm", "gpu"), make_config("lm", "cpu"),
                      make_config("lm", "cpu", {"model.dtype": "bfloat16"}))
    assert "sized for a GPU" in _cpu_note(gpu, "gpu", "cpu")
    # It describes the preset as shipped, not the sizes --set gave it.
    big = make_config("lm", "gpu", {"model.d_model": 8192, "model.n_head": 8})
    assert "(6x384, batch 64 x 256, bfloat16)" in _cpu_note(big, "gpu", "cpu") == _cpu_note(gpu, "gpu", "cpu")
    assert "slower than float32" in _cpu_note(bf16, "cpu", "cpu")
    assert _cpu_note(f32, "cpu", "cpu") is None and _cpu_note(gpu, "gpu", "gpu") is None
    # The real command prints it once, as a note, and trains (the preset's sizes overridden).
    code, out, err = cli(capsys, "train", "lm", "--preset", "gpu", "--data", corpus, "--steps", 20,
                         "--out", tmp_path / "g", "--no-progress", *LM_TINY)
    assert code == 0 and err.count("scratchformer: note: the gpu preset") == 1
    assert json.loads((tmp_path / "g" / "config.json").read_text())["model"]["dtype"] == "bfloat16"


def test_plots(lm_run, rev_run, capsys):
    assert cli(capsys, "plot", lm_run)[0] == 0 and (lm_run / "loss.png").stat().st_size > 10_000
    assert (lm_run / "attention.png").stat().st_size > 10_000
    assert cli(capsys, "plot", rev_run)[0] == 0 and (rev_run / "attention.png").stat().st_size > 10_000


def test_eval_on_a_text_of_ones_choice(tmp_path, lm_run, corpus, capsys):
    """`eval DIR --data F` scores every character of F: on the run's own validation part
    it gives `eval`'s validation loss, and on a text of one window its loss is the mean
    cross-entropy of one forward pass, computed here from the logits."""
    import jax.numpy as jnp


    whole = corpus.read_text()
    val = tmp_path / "val.txt"
    val.write_text(whole[len(text_module.split(np.arange(len(whole)), 0.1)[0]):])
    code, out, _ = cli(capsys, "eval", lm_run, "--json")
    own = json.loads(out)
    code, out, err = cli(capsys, "eval", lm_run, "--data", val, "--json")
    got = json.loads(out)
    assert code == 0 and err == "" and got["tokens"] == own["val_tokens"] == len(val.read_text()) - 1
    assert got["loss"] == pytest.approx(own["val_loss"], rel=1e-6) and got["step"] == own["step"]
    # an ASCII text: one byte a character, so bits per byte is the loss in bits
    assert got["bits_per_byte"] == pytest.approx(got["loss"] / np.log(2), rel=1e-9) == own["bits_per_byte"]

    task, params, _ = runs.load(lm_run)
    block = task.cfg.model.block_size
    one = tmp_path / "one.txt"
    one.write_text("over the lazy dog.\nthe quick"[: block + 1])
    ids = task.tokenizer.encode(one.read_text())
    logits, _ = lm_forward(params, jnp.asarray(ids[:-1])[None], cfg=task.cfg.model)
    want = -float(jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[0]), jnp.asarray(ids[1:])[:, None], 1)))
    code, out, _ = cli(capsys, "eval", lm_run, "--data", one, "--json")
    assert json.loads(out)["loss"] == pytest.approx(want, rel=1e-5) and json.loads(out)["tokens"] == block

    # The progress callback hears of every target once, one call per evaluation chunk.
    for n in (block + 1, block + 2, 2 * block + 1, 700 * block + 5):
        ids = np.resize(task.tokenizer.encode(whole), n)
        seen = []
        _, scored, _ = task.loss_on(params, ids, on_scored=seen.append)
        assert sum(seen) == scored == n - 1
        windows = len(text_module.eval_windows(ids, block)["inputs"])
        assert len(seen) == -(-windows // eval_chunk(block, task.cfg.model.n_head))


def test_a_validation_split_shorter_than_a_window_is_scored_in_one(tmp_path, capsys):
    """A text whose validation split is shorter than model.block_size + 1 tokens trains:
    the periodic and the final evaluation score the split in one shorter window, and its
    loss is a naive loop's, each target predicted by a forward pass over the tokens before it."""
    import jax.numpy as jnp

    data = tmp_path / "small.txt"
    data.write_text("the quick brown fox jumps over the lazy dog.\n" * 3)  # 135 characters
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "lm", "--data", data, "--steps", "20", "--out", run, "--no-progress",
                       *LM_TINY, "--set", "train.eval_every=10")
    assert code == 0, err
    task, params, _ = runs.load(run, with_data=True)
    val, block = np.asarray(task.val_ids), task.cfg.model.block_size
    assert 2 <= len(val) < block + 1 < len(task.train_ids)
    evals = read_metrics(run).evals
    assert [r["step"] for r in evals] == [10, 20] and all(np.isfinite(r["val_loss"]) for r in evals)

    code, out, err = cli(capsys, "eval", run, "--json")
    got = json.loads(out)
    assert code == 0 and got["val_tokens"] == len(val) - 1, err
    naive = [-float(jax.nn.log_softmax(lm_forward(params, jnp.asarray(val[:t])[None], cfg=task.cfg.model)[0][0, -1])
                    [val[t]]) for t in range(1, len(val))]
    assert got["val_loss"] == pytest.approx(np.mean(naive), rel=1e-5)
    assert got["val_loss"] == pytest.approx(next(r["val_loss"] for r in evals if r["step"] == got["step"]), rel=1e-6)
    assert got["bits_per_byte"] == pytest.approx(got["val_loss"] / np.log(2), rel=1e-9)  # ASCII: a byte a character


def test_plot_of_a_run_before_its_first_rows(tmp_path):
    """A run folder whose metrics.jsonl is still empty plots without warnings: the loss
    panel says so instead of drawing an empty legend."""
    import warnings

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_loss(fresh, 128, "tok")
    assert out.stat().st_size > 10_000


def test_loss_plot_shows_gradient_norm_and_learning_rate(lm_run):
    plt = _matplotlib()
    fig, ax = plt.subplots()
    train = read_metrics(lm_run).train
    _plot_optimizer(ax, train)
    (norm,), (lr,) = ax.get_lines(), fig.axes[1].get_lines()
    assert list(norm.get_ydata()) == [r["grad_norm"] for r in train] and len(train) == 40
    assert list(lr.get_ydata()) == [r["lr"] for r in train]
    plt.close(fig)


def test_plot_leaves_out_lines_that_are_not_rows(tmp_path, lm_run, capsys):
    """A damaged metrics.jsonl plots what it can and names the lines it left out; a last
    line without its newline (a row being written) is left out without a note."""
    run = tmp_path / "damaged"
    shutil.copytree(lm_run, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    junk = ["5", "garbage", '{"step": "x", "loss": 1.0}', '{"step": 3, "loss": "1.0"}', '{"step": -1}',
            '["step", 1]', '{"step": 2.5, "loss": 1.0}', '{"loss": 1.0}']
    damaged = lines[:2] + junk + lines[2:] + ['{"step": 41, "loss": 1.0, "grad_n']
    (run / "metrics.jsonl").write_text("\n".join(damaged))
    rows, bad = metrics_rows(run / "metrics.jsonl")
    assert bad == list(range(3, 3 + len(junk))) and rows == [json.loads(line) for line in lines]
    assert metrics_rows(lm_run / "metrics.jsonl") == (rows, [])
    odd = tmp_path / "odd.jsonl"  # null (a non-finite loss) and numbers out of float range are rows too
    odd.write_text('{"step": 7, "loss": null, "grad_norm": 1e400, "skipped": true}\n')
    assert metrics_rows(odd) == ([{"step": 7, "loss": None, "grad_norm": float("inf"), "skipped": True}], [])
    code, out, err = cli(capsys, "plot", run)
    assert code == 0 and out.split() == [str(run / "loss.png"), str(run / "attention.png")]
    assert err.strip() == (f"scratchformer: note: {run / 'metrics.jsonl'}: left out {len(junk)} line(s) that are "
                           "not metric rows (line 3, 4, 5, 6, 7, ...)")


def test_a_run_gone_non_finite_writes_strict_json(tmp_path, lm_run, corpus, capsys):
    """With train.skip_nonfinite and an absurd learning rate every step after the first is
    skipped and the validation loss is NaN: metrics.jsonl, summary.json, the checkpoint's
    header and eval --json say null there (Python would write NaN, which is not JSON),
    the comparison table still counts every step, and plot marks the steps."""
    def strict(text):
        def refuse(name):
            raise AssertionError(f"{name} is not JSON")
        return json.loads(text, parse_constant=refuse)

    out = tmp_path / "gone"
    code, _, _ = cli(capsys, "train", "lm", "--data", corpus, "--steps", 20, "--out", out, "--no-progress", *LM_TINY,
                     "--set", "optim.lr=1e30", "--set", "optim.warmup_steps=1", "--set", "train.skip_nonfinite=true",
                     "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10")
    assert code == 0
    rows = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in rows if "val_loss" in r] == [None, None]
    assert all(r.get("skipped") for r in rows if "loss" in r and r["step"] > 1)
    assert strict((out / "summary.json").read_text())["val_loss"] is None
    raw = ckpt.latest(out).read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]["scratchformer"]
    assert strict(header)["step"] == 20
    code, text, _ = cli(capsys, "eval", out, "--json")
    assert code == 0 and strict(text)["val_loss"] is None
    code, text, _ = cli(capsys, "plot", out, lm_run, "--out", tmp_path / "c.png")
    assert code == 0 and text.splitlines()[1].split()[1:4] == ["20", "-", "-"]
    m = read_metrics(out)
    assert [r["step"] for r in m.train] == [1] and m.evals == [] and m.not_finite == list(range(2, 21))
    code, text, _ = cli(capsys, "plot", out)  # the steps not finite are marked on the loss panel
    assert code == 0 and text.split() == [str(out / "loss.png"), str(out / "attention.png")]


def test_compare_runs(tmp_path, lm_run, corpus, capsys):
    """`plot A B --out F` draws each run's validation losses as logged, labels each run by
    the config values that differ, puts steps of different sizes on a tokens-seen axis,
    and prints a table whose figures are the runs' own."""
    other = tmp_path / "other"
    assert cli(capsys, "train", "lm", "--data", corpus, "--steps", 40, "--out", other, "--no-progress", *LM_TINY,
               "--set", "train.batch_size=4", "--set", "optim.lr=1e-3")[0] == 0
    code, out, err = cli(capsys, "plot", lm_run, other, "--out", tmp_path / "c.png")
    assert code == 0 and err == "" and (tmp_path / "c.png").stat().st_size > 10_000
    runs = [read_run(lm_run), read_run(other)]
    for r in runs:
        best = min(r["evals"], key=lambda e: e["val_loss"])
        row = next(line for line in out.splitlines() if line.startswith(str(r["dir"])))
        assert row.split()[1:] == ["40", f"{best['val_loss']:.4f}", f"({best['step']})",
                                   f"{r['summary']['val_loss']:.4f}", f"{r['summary']['train_time_s']:.1f}"]
    plt = _matplotlib()
    fig, ax = plt.subplots()
    assert plot_comparison(ax, runs) == "tokens seen (millions)"  # 8 x 16 vs 4 x 16 tokens per step
    val_lines = [line for line in ax.get_lines() if line.get_label()[0] != "_"]
    for line, r, per_step in zip(val_lines, runs, (128, 64)):
        assert list(line.get_ydata()) == [e["val_loss"] for e in r["evals"]]
        assert list(line.get_xdata()) == [e["step"] * per_step / 1e6 for e in r["evals"]]
    assert [line.get_label() for line in val_lines] == [
        "lm (optim.lr=0.003, train.batch_size=8)", "other (optim.lr=0.001, train.batch_size=4)"]
    ax.clear()
    assert plot_comparison(ax, runs[:1] * 2) == "optimizer step"
    plt.close(fig)
    # The same run as if its text had been tokenized otherwise: other characters are still
    # one character a token (no note); BPE tokens are not.
    retokenized = tmp_path / "retokenized"
    shutil.copytree(other, retokenized)
    (retokenized / "tokenizer.json").write_text('{"kind": "char", "chars": "ab"}')
    code, _, err = cli(capsys, "plot", lm_run, retokenized, "--out", tmp_path / "c2.png")
    assert code == 0 and err == "", err
    (retokenized / "tokenizer.json").write_text(BpeTokenizer.train([corpus.read_text()], 300).to_json())
    code, _, err = cli(capsys, "plot", lm_run, retokenized, "--out", tmp_path / "c2.png")
    assert code == 0 and err.startswith("scratchformer: note: the runs have different tokenizers") and \
        "bits per byte" in err and err.count("\n") == 1, err


def test_compare_a_run_still_training(tmp_path, lm_run, capsys):
    """A run folder without summary.json and with a half-written last metrics line (as while
    it trains) is compared from what it has: its final loss and time show as '-'."""
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(lm_run / "config.json", live / "config.json")
    rows = (lm_run / "metrics.jsonl").read_text().splitlines()[:25]
    (live / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 26, "lo')
    code, out, err = cli(capsys, "plot", lm_run, live, "--out", tmp_path / "c.png")
    assert code == 0 and err == ""
    evals = [json.loads(r) for r in rows if "val_loss" in r]
    last = max(json.loads(r)["step"] for r in rows if '"loss"' in r)
    best = min(evals, key=lambda e: e["val_loss"])
    line = next(x for x in out.splitlines() if x.startswith(str(live)))
    assert evals and line.split()[1:] == [str(last), f"{best['val_loss']:.4f}", f"({best['step']})", "-", "-"]


def test_lm_attention_plot_reads_held_out_text(lm_run):
    """The LM's attention picture is drawn on the validation split's first non-empty line
    (one block long here), or on the model's own sample when the text is not at hand."""

    task, params, meta = runs.load(lm_run)
    ids, what = lm_snippet(task, params, meta, lm_run)
    assert what == "held-out text" and task.tokenizer.decode(ids) == "the quick brown "  # block_size 16
    ids, what = lm_snippet(task, params, {}, lm_run)
    assert what.startswith("the model's own sample") and len(ids) == 16 and ids[0] == 0


@pytest.fixture(scope="module")
def bad_input_files(tmp_path_factory, lm_run, rev_run, corpus):
    """The files and folders the bad inputs name, made once for all of them (the cases only
    read them, and each checks that it wrote nothing)."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "empty.txt").write_bytes(b"")
    (tmp / "binary.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp / "latin1.txt").write_bytes("café au lait ".encode("latin-1") * 50)
    (tmp / "short.txt").write_text("to be or not")
    (tmp / "one.txt").write_text("t")
    (tmp / "two-windows.txt").write_text("abcdefghij" * 8)  # 56 training characters: 2 windows of 16, none of 32
    (tmp / "foreign.txt").write_text("the lazy dog. Zwei Straße " * 3)
    (tmp / "nockpt").mkdir()
    (tmp / "started").mkdir()  # a run just started: its config, no metrics logged yet
    shutil.copy(lm_run / "config.json", tmp / "started")
    trunc = tmp / "trunc"
    trunc.mkdir()
    (trunc / "checkpoints").mkdir()
    raw = (lm_run / "checkpoints" / "best.safetensors").read_bytes()
    (trunc / "checkpoints" / "step_00000040.safetensors").write_bytes(raw[: len(raw) // 3])
    garbled = tmp / "garbled"
    (garbled / "checkpoints").mkdir(parents=True)
    shutil.copy(lm_run / "config.json", garbled / "config.json")
    (garbled / "checkpoints" / "step_00000040.safetensors").write_bytes(b"\xff" * 8 + raw[8:])
    nosummary = tmp / "nosummary"
    shutil.copytree(lm_run, nosummary)
    (nosummary / "summary.json").write_text('{"val_loss": 1.5')
    for name, text in [("str_int.json", '{"model": {"n_layer": "2"}}'), ("lm_task.json", '{"task": "lm"}'),
                       ("list.json", "[1]"), ("typo.json", '{"model": {"n_layers": 2}}'),
                       ("section.json", '{"modle": {}}'), ("cut.json", '{"model": {"n_layer": 2'),
                       ("other_task.json", '{"task": "lm", "data": {"max_len": 7, "min_len": 1}}')]:
        (tmp / name).write_text(text)
    prepare([corpus], tmp / "tok")
    broken = {}
    for name, change in [("cut", lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2])),
                         ("badtok", lambda d: (d / "tokenizer.json").write_text("{\"model\": 3}")),
                         ("wide", lambda d: (d / "meta.json").write_text((d / "meta.json").read_text().replace(
                             '"vocab_size": 29', '"vocab_size": 70000')))]:
        broken[name] = tmp / f"tok-{name}"
        shutil.copytree(tmp / "tok", broken[name])
        change(broken[name])
    (tmp / "tok-empty").mkdir()
    if os.geteuid() == 0:  # root ignores directory permissions, but not a path below a regular file
        unwritable = tmp / "a-file"
        unwritable.write_text("x")
    else:
        unwritable = tmp / "locked"
        unwritable.mkdir()
        os.chmod(unwritable, stat.S_IRUSR | stat.S_IXUSR)
    return SimpleNamespace(
        tmp=tmp, lm_run=lm_run, rev_run=rev_run, corpus=corpus, broken=broken, trunc=trunc, garbled=garbled,
        nosummary=nosummary, unwritable=unwritable, lm=["train", "lm", "--data", corpus, "--no-progress", *LM_TINY],
        # paths a refused command must not create
        not_made=[tmp / "nockpt" / "config.json", tmp / "nockpt" / "checkpoints", tmp / "new", tmp / "tok2",
                  tmp / "big", tmp / "c.png", tmp / "c.jpg"])


def _case(case_id, make):
    """One bad input: make(f), f being `bad_input_files`, gives the command's arguments and
    a text its one line of error must hold."""
    return pytest.param(make, id=case_id)


BAD_INPUTS = [
    _case("missing-data", lambda f: (["train", "lm", "--data", f.tmp / "nope.txt"], "no such file")),
    _case("empty-data", lambda f: (["train", "lm", "--data", f.tmp / "empty.txt"], "empty")),
    _case("binary-data", lambda f: (["train", "lm", "--data", f.tmp / "binary.txt"], "binary")),
    _case("non-utf8-data", lambda f: (["train", "lm", "--data", f.tmp / "latin1.txt"], "not UTF-8")),
    _case("text-shorter-than-a-block", lambda f: (["train", "lm", "--data", f.tmp / "short.txt"], "block")),
    _case("token-folder-without-its-files",
          lambda f: (["train", "lm", "--data", f.tmp / "tok-empty"],
                     f"--data {f.tmp / 'tok-empty'} lacks train.bin, val.bin, tokenizer.json, meta.json")),
    _case("truncated-token-file",
          lambda f: (["train", "lm", "--data", f.broken["cut"]],
                     f"--data {f.broken['cut']}: train.bin has ")),
    _case("tokenizer-file-that-does-not-load",
          lambda f: (["train", "lm", "--data", f.broken["badtok"]],
                     f"{f.broken['badtok'] / 'tokenizer.json'} is not a tokenizer this version reads")),
    _case("vocabulary-too-large-for-its-dtype",
          lambda f: (["train", "lm", "--data", f.broken["wide"]],
                     "a vocabulary of 70000 symbols does not fit uint16")),
    _case("resume-on-other-data",
          lambda f: ([*f.lm, "--steps", "40", "--resume", "--out", f.lm_run, "--data", f.tmp / "tok"],
                     f"--data {f.tmp / 'tok'}: cannot resume on it, the run was trained on {f.corpus.resolve()}")),
    _case("prepare-into-an-existing-folder",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok"],
                     "already exists")),
    _case("prepare-a-missing-text",
          lambda f: (["prepare", f.tmp / "nope.txt", "--out", f.tmp / "tok3"],
                     f"scratchformer: error: {f.tmp / 'nope.txt'}: no such file")),
    _case("prepare-bpe-without-a-size",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--tokenizer", "bpe"],
                     "--tokenizer bpe needs --vocab-size N")),
    _case("prepare-holding-out-one-token",
          lambda f: (["prepare", f.tmp / "short.txt", "--out", f.tmp / "tok2", "--val-fraction", "0.05"],
                     "--val-fraction 0.05 leaves the validation split 1 of the text's 12 tokens; it needs 2 or more")),
    _case("prepare-holding-out-everything",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--val-fraction", "1"],
                     "argument --val-fraction: '1' must be < 1")),
    _case("prepare-bpe-with-a-tiny-vocabulary",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--tokenizer", "bpe", "--vocab-size", "5"],
                     "argument --vocab-size: '5' must be >= 257")),
    _case("prepare-with-a-runs-tokenizer-and-a-size",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--tokenizer-from", f.lm_run, "--vocab-size",
                      "300"],
                     "--tokenizer-from takes the run's tokenizer; leave out --tokenizer, --vocab-size and --gpt2")),
    _case("prepare-with-a-missing-runs-tokenizer",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--tokenizer-from", f.tmp / "missing"],
                     f"--tokenizer-from run folder {f.tmp / 'missing'}")),
    _case("prepare-with-a-reverse-runs-tokenizer",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--tokenizer-from", f.rev_run],
                     "is a reverse run; --tokenizer-from takes lm runs only")),
    _case("prepare-a-text-the-runs-characters-do-not-cover",
          lambda f: (["prepare", f.tmp / "foreign.txt", "--out", f.tmp / "tok2", "--tokenizer-from", f.lm_run],
                     f"{f.tmp / 'foreign.txt'}: 3 characters ('S', 'Z', 'ß') are not in the model's vocabulary")),
    _case("not-a-number",
          lambda f: (["prepare", f.corpus, "--out", f.tmp / "tok2", "--val-fraction", "nan"],
                     "argument --val-fraction: 'nan' is not a finite number")),
    _case("prompt-char-out-of-vocab", lambda f: (["sample", f.lm_run, "--prompt", "hello Z"], "'Z'")),
    _case("escaped-newline-in-prompt",
          lambda f: (["sample", f.lm_run, "--prompt", "the\\n"],
                     "--prompt \"the\\n\" holds a backslash, which is not in the model's vocabulary; for a "
                     "newline, pass a real one (bash: --prompt $'ROMEO:\\n')")),
    _case("unknown-symbol", lambda f: (["sample", f.rev_run, "--input", "1 2 99"], "'99'")),
    _case("negative-symbol", lambda f: (["sample", f.rev_run, "--input", "1 -2"], "'-2'")),
    _case("input-too-long", lambda f: (["sample", f.rev_run, "--input", "1 2 3 4 5 6 7"], "at most 6")),
    _case("eval-without-checkpoint", lambda f: (["eval", f.tmp / "nockpt"], "no checkpoint")),
    _case("sample-without-checkpoint", lambda f: (["sample", f.tmp / "nockpt"], "no checkpoint")),
    _case("eval-of-a-missing-folder", lambda f: (["eval", f.tmp / "missing"], "does not exist")),
    _case("eval-of-a-missing-checkpoint-file",
          lambda f: (["eval", f.tmp / "nockpt" / "step_00000010.safetensors"],
                     f"checkpoint file {f.tmp / 'nockpt' / 'step_00000010.safetensors'} does not exist")),
    _case("eval-of-a-file-that-is-no-checkpoint",
          lambda f: (["eval", f.lm_run / "config.json"],
                     f"{f.lm_run / 'config.json'} is a file, not a run folder or a .safetensors checkpoint")),
    _case("resume-without-checkpoint",
          lambda f: ([*f.lm, "--resume", "--out", f.tmp / "nockpt"],
                     "no checkpoint to resume")),
    _case("resume-saved-config",
          lambda f: (["train", "lm", "--resume", "--out", f.tmp / "nockpt"],
                     "no checkpoint to resume")),
    _case("resume-into-a-new-folder",
          lambda f: ([*f.lm, "--resume", "--out", f.tmp / "new"],
                     f"cannot resume: {f.tmp / 'new'} does not exist")),
    _case("resume-saved-config-new-folder",
          lambda f: (["train", "lm", "--resume", "--out", f.tmp / "new"],
                     f"cannot resume: {f.tmp / 'new'} does not exist")),
    _case("resume-into-a-file",
          lambda f: ([*f.lm, "--resume", "--out", f.corpus],
                     f"cannot resume: {f.corpus} is a file, not a run folder")),
    _case("resume-with-another-config",
          lambda f: ([*f.lm, "--resume", "--out", f.lm_run, "--set", "model.n_layer=2"],
                     "different config (model.n_layer: 1 -> 2); a resumed run keeps its config: leave out "
                     "--preset, --config, --set, --steps and --seed")),
    _case("truncated-checkpoint", lambda f: (["eval", f.trunc], "truncated or corrupted")),
    _case("resume-from-a-garbled-header",
          lambda f: (["train", "lm", "--resume", "--out", f.garbled],
                     "truncated or corrupted")),
    _case("d-model-not-divisible",
          lambda f: ([*f.lm, "--set", "model.d_model=30", "--set", "model.n_head=4"],
                     "not divisible")),
    _case("rope-with-an-odd-head-width",
          lambda f: ([*f.lm, "--set", "model.positions=rope", "--set", "model.d_model=30"],
                     "the head width model.d_model / model.n_head = 30 / 2 must be even")),
    _case("unknown-positions",
          lambda f: ([*f.lm, "--set", "model.positions=alibi"],
                     "model.positions='alibi' is not one of learned, sinusoidal, rope")),
    _case("zero-lr", lambda f: ([*f.lm, "--set", "optim.lr=0"], "optim.lr=0.0")),
    _case("negative-lr", lambda f: ([*f.lm, "--set", "optim.lr=-1e-3"], "optim.lr")),
    _case("warmup-longer-than-training",
          lambda f: ([*f.lm, "--steps", "10", "--set", "optim.warmup_steps=50"],
                     "optim.warmup_steps=50 must be smaller than train.steps=10 (for a short run, also pass --set")),
    _case("dropout-1", lambda f: ([*f.lm, "--set", "model.dropout=1.0"], "model.dropout")),
    _case("negative-dropout", lambda f: ([*f.lm, "--set", "model.dropout=-0.1"], "model.dropout")),
    _case("ema-decay-1",
          lambda f: ([*f.lm, "--set", "train.ema=1"],
                     "train.ema=1.0 must be in [0, 1) (0 turns it off)")),
    _case("block-size-0", lambda f: ([*f.lm, "--set", "model.block_size=0"], "model.block_size")),
    _case("batch-size-0", lambda f: ([*f.lm, "--set", "train.batch_size=0"], "train.batch_size")),
    _case("unknown-preset", lambda f: (["train", "lm", "--preset", "huge"], "unknown preset 'huge'")),
    _case("unknown-set-key", lambda f: ([*f.lm, "--set", "model.width=3"], "unknown config key 'model.width'")),
    _case("wrong-set-type", lambda f: ([*f.lm, "--set", "model.n_layer=two"], "'two' is not a valid int")),
    _case("malformed-set", lambda f: ([*f.lm, "--set", "model.n_layer"], "section.key=value")),
    _case("derived-key", lambda f: ([*f.lm, "--set", "model.vocab_size=3"], "derived")),
    _case("unwritable-out", lambda f: ([*f.lm, "--out", f.unwritable / "run"], "cannot be written")),
    _case("missing-config",
          lambda f: ([*f.lm, "--config", f.tmp / "nope.json"],
                     f"--config {f.tmp / 'nope.json'}: no such file")),
    _case("config-of-a-folder-without-a-config",
          lambda f: ([*f.lm, "--config", f.tmp / "nockpt"],
                     f"--config {f.tmp / 'nockpt'} is a folder without a config.json")),
    _case("config-of-another-task",
          lambda f: (["train", "reverse", "--config", f.lm_run / "config.json"],
                     f"--config {f.lm_run / 'config.json'} is a config for task 'lm', not 'reverse'")),
    _case("config-with-a-string-for-an-int",
          lambda f: ([*f.lm, "--config", f.tmp / "str_int.json"],
                     "str_int.json: model.n_layer='2' has type str, expected int")),
    _case("config-of-a-reverse-task",
          lambda f: (["train", "reverse", "--config", f.tmp / "lm_task.json"],
                     "lm_task.json is a config for task 'lm', not 'reverse'")),
    _case("config-holding-a-list",
          lambda f: ([*f.lm, "--config", f.tmp / "list.json"],
                     "list.json must hold a JSON object, not list")),
    _case("config-with-an-unknown-key",
          lambda f: ([*f.lm, "--config", f.tmp / "typo.json"],
                     "typo.json: unknown config key 'model.n_layers'; did you mean model.n_layer? known keys: "
                     "model.n_layer,")),
    _case("config-with-an-unknown-section",
          lambda f: ([*f.lm, "--config", f.tmp / "section.json"],
                     "section.json: unknown config section(s) ['modle']")),
    _case("config-cut-short",
          lambda f: ([*f.lm, "--config", f.tmp / "cut.json"],
                     "cut.json is not a valid config: Expecting")),
    _case("config-setting-the-other-tasks-key",
          lambda f: ([*f.lm, "--config", f.tmp / "other_task.json"],
                     "other_task.json: data.max_len is a setting of the reverse task; the lm task does not use it")),
    _case("set-of-the-other-tasks-key",
          lambda f: ([*f.lm, "--set", "data.max_len=7"],
                     "data.max_len is a setting of the reverse task; the lm task does not use it")),
    _case("epoch-order-with-no-whole-window",
          lambda f: (["train", "lm", "--data", f.tmp / "two-windows.txt", "--set", "data.order=epoch",
                      "--set", "model.block_size=32", "--set", "train.batch_size=8", "--set", "data.val_fraction=0.3"],
                     "data.order=epoch: the training split's 56 tokens hold no window of model.block_size=32 tokens")),
    _case("unknown-data-order",
          lambda f: ([*f.lm, "--set", "data.order=sequential"], "data.order='sequential' is not one of random, epoch")),
    _case("set-of-the-other-tasks-key-reverse",
          lambda f: (["train", "reverse", "--set", "data.eval_windows=3"],
                     "data.eval_windows is a setting of the lm task; the reverse task does not use it")),
    # ~16e9 parameters (under config's limit): ~260 GB of weights, gradients and AdamW moments
    _case("model-too-big-for-memory",
          lambda f: ([*f.lm, "--set", "model.n_layer=5", "--set", "model.d_model=16384", "--set", "model.d_ff=65536",
                      "--out", f.tmp / "big"],
                     "training this model (model.n_layer=5, model.d_model=16384, model.d_ff=65536, "
                     "model.block_size=16: 16,107,")),
    _case("coordinator-not-host-port",
          lambda f: ([*f.lm, "--coordinator", "host:99999", "--num-processes", "2", "--process-id", "0"],
                     "--coordinator 'host:99999' is not HOST:PORT (a host name or address, a port 1-65535)")),
    _case("eval-text-with-unknown-characters",
          lambda f: (["eval", f.lm_run, "--data", f.tmp / "latin1.txt"],
                     "not UTF-8")),
    _case("eval-text-outside-the-vocabulary",
          lambda f: (["eval", f.lm_run, "--data", f.tmp / "foreign.txt"],
                     "foreign.txt holds 3 character(s) the model has no token for ('S', 'Z', 'ß'); it knows the 29 "
                     "characters")),
    _case("eval-text-of-one-token",
          lambda f: (["eval", f.lm_run, "--data", f.tmp / "one.txt"],
                     "one.txt has 1 token; scoring needs at least 2 (a token and the one that follows it)")),
    _case("eval-text-on-a-reverse-run",
          lambda f: (["eval", f.rev_run, "--data", f.tmp / "short.txt"],
                     "--data is for lm runs")),
    _case("beam-too-wide",
          lambda f: (["eval", f.rev_run, "--beam", "100000"],
                     "argument --beam: '100000' must be at most 64")),
    _case("sample-longer-than-int32-positions",
          lambda f: (["sample", f.lm_run, "--tokens", "3000000000"],
                     "argument --tokens: '3000000000' must be at most 1,000,000,000")),
    _case("existing-run-without-resume", lambda f: ([*f.lm, "--out", f.lm_run], "already holds a run")),
    _case("unknown-task", lambda f: (["train", "translate"], "invalid choice")),
    _case("bad-temperature", lambda f: (["sample", f.lm_run, "--temperature", "-1"], "--temperature")),
    _case("lm-options-on-a-reverse-run",
          lambda f: (["sample", f.rev_run, "--input", "1 2", "--temperature", "0", "--no-cache"],
                     "--temperature, --no-cache are for lm runs; reverse runs take --input, --beam")),
    _case("a-seed-on-a-reverse-run",
          lambda f: (["sample", f.rev_run, "--input", "1 2", "--seed", "0"],
                     "--seed is for lm runs; reverse runs take --input, --beam")),
    _case("beam-on-an-lm-run",
          lambda f: (["sample", f.lm_run, "--beam", "2"],
                     "--beam is for reverse runs; lm runs take --prompt, --tokens")),
    _case("eval-beam-on-an-lm-run",
          lambda f: (["eval", f.lm_run, "--beam", "2"],
                     "--beam is for reverse runs; lm runs take --data")),
    _case("eval-data-beam-on-an-lm-run",
          lambda f: (["eval", f.lm_run, "--data", f.corpus, "--beam", "1"],
                     "--beam is for reverse runs; lm runs take --data")),
    _case("bad-top-p", lambda f: (["sample", f.lm_run, "--top-p", "0"], "--top-p")),
    _case("compare-runs-of-two-tasks",
          lambda f: (["plot", f.lm_run, f.rev_run, "--out", f.tmp / "c.png"],
                     "the runs are of different tasks (lm, reverse); compare runs of one task")),
    _case("compare-with-a-missing-run",
          lambda f: (["plot", f.lm_run, f.tmp / "missing", "--out", f.tmp / "c.png"],
                     f"run folder {f.tmp / 'missing'} does not exist")),
    _case("compare-with-a-run-just-started",
          lambda f: (["plot", f.lm_run, f.tmp / "started", "--out", f.tmp / "c.png"],
                     f"{f.tmp / 'started'} has no metrics.jsonl: no training steps logged yet")),
    _case("compare-into-a-missing-folder",
          lambda f: (["plot", f.lm_run, f.lm_run, "--out", f.tmp / "no" / "c.png"],
                     f"folder {f.tmp / 'no'} for {f.tmp / 'no' / 'c.png'} does not exist")),
    _case("compare-into-a-non-png",
          lambda f: (["plot", f.lm_run, f.lm_run, "--out", f.tmp / "c.jpg"],
                     "must end in .png")),
    _case("out-with-one-run", lambda f: (["plot", f.lm_run, "--out", f.tmp / "c.png"], "--out")),
    _case("compare-a-run-whose-summary-is-cut-short",
          lambda f: (["plot", f.lm_run, f.nosummary, "--out", f.tmp / "c.png"],
                     f"{f.nosummary / 'summary.json'} is not JSON (Expecting ")),
    _case("unknown-optimizer",
          lambda f: ([*f.lm, "--set", "optim.name=sgd"],
                     "optim.name='sgd' is not one of adamw, muon")),
    _case("zero-muon-lr",
          lambda f: ([*f.lm, "--set", "optim.name=muon", "--set", "optim.muon_lr=0"],
                     "optim.muon_lr=0.0 must be > 0")),
    _case("decay-fraction-over-1",
          lambda f: ([*f.lm, "--set", "optim.schedule=wsd", "--set", "optim.decay_fraction=1.5"],
                     "optim.decay_fraction=1.5 must be in (0, 1]")),
]


@pytest.mark.parametrize("make", BAD_INPUTS)
def test_bad_input_gives_one_clear_line(make, bad_input_files, capsys):
    """Exit code 2, one line on stderr holding the expected text, no traceback, and nothing
    written: not into the existing run, and none of the paths a command would have made."""
    args, match = make(bad_input_files)
    run_files = sorted(p.name for p in bad_input_files.lm_run.rglob("*"))
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0] and "Traceback" not in err, \
        f"exit {code}, stderr {err!r}"
    assert sorted(p.name for p in bad_input_files.lm_run.rglob("*")) == run_files
    # "big" (model too big for memory) is refused before its run folder is made
    assert [p for p in bad_input_files.not_made if p.exists()] == []


def test_prepare_with_a_runs_tokenizer_makes_data_to_fine_tune_it_on(tmp_path, lm_run, corpus, capsys):
    """A character run's tokenizer cannot be learned again from another text (the characters
    differ): prepare --tokenizer-from writes token files with the run's own, which
    --init-from then accepts (its 16 positions are fewer than gpt2-finetune's 256: taken as
    they are)."""
    text = tmp_path / "other.txt"
    text.write_text("a lazy dog.\n" * 100)  # fewer characters than the run's
    code, _, err = cli(capsys, "prepare", text, "--out", tmp_path / "tok", "--tokenizer-from", lm_run)
    assert code == 0, err
    prepare([text], tmp_path / "own")  # the text's own characters
    run_tok, own_tok = runs.load(lm_run)[0].tokenizer, TokenFiles(tmp_path / "own").tokenizer
    assert TokenFiles(tmp_path / "tok").tokenizer.to_json() == run_tok.to_json() != own_tok.to_json()
    code, _, err = cli(capsys, "train", "lm", "--init-from", lm_run, "--data", tmp_path / "tok", "--out",
                       tmp_path / "ft", "--steps", "2", "--set", "train.batch_size=2", "--set", "data.eval_windows=2",
                       "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["block_size"] == 16


def test_sample_too_long_for_memory_is_one_line(monkeypatch, lm_run, capsys):
    """A sample holds its ids, 4 bytes a token, three times (the input, the loop's buffer,
    the output): a billion tokens need ~12 GB, refused where less is free (here 2 GB)."""
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 2_000_000_000)
    code, _, err = cli(capsys, "sample", lm_run, "--tokens", "1000000000")
    assert code == 2 and err.count("\n") == 1, err
    assert "sampling 1,000,000,000 tokens needs ~12.0 GB, more than the 2.0 GB free" in err, err


def test_xla_out_of_memory_is_one_line(monkeypatch, capsys):
    """What memory.check_fits cannot foresee: XLA's own RESOURCE_EXHAUSTED, raised
    inside any command, is one line and exit 2; other runtime errors keep their traceback."""

    def oom(a):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 6388100005000 bytes.\nmore")
    monkeypatch.setitem(cli_module.RUN, "bench", oom)
    assert cli(capsys, "bench")[1:] == ("", "scratchformer: error: out of memory (RESOURCE_EXHAUSTED: Out of memory "
                                            "allocating 6388100005000 bytes.); choose a smaller model, batch or "
                                            "sample\n")

    def other(a):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")
    monkeypatch.setitem(cli_module.RUN, "bench", other)
    with pytest.raises(jax.errors.JaxRuntimeError):
        cli(capsys, "bench")


def test_a_real_process_exits_2_without_traceback(tmp_path):
    r = run_cli("train", "lm", "--data", tmp_path / "nope.txt")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "no such file" in r.stderr


def test_batch_not_divisible_by_devices(tmp_path, corpus):
    r = run_cli("train", "lm", "--data", corpus, "--out", tmp_path / "run", *LM_TINY, "--set", "train.batch_size=6",
                env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 2 and "train.batch_size=6 is not divisible by the 4 devices" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_eval_finds_and_checks_the_runs_text(tmp_path, corpus, capsys):
    """`eval` re-reads the text a run trained on (its validation split): a moved file, a
    changed file and a run trained from a Python string each give one line saying so."""

    text = tmp_path / "mine.txt"
    shutil.copy(corpus, text)
    run = tmp_path / "run"
    assert cli(capsys, "train", "lm", "--data", text, "--steps", 20, "--out", run, "--no-progress", *LM_TINY)[0] == 0
    assert cli(capsys, "eval", run)[0] == 0
    text.write_text(corpus.read_text() + "more")
    assert cli(capsys, "eval", run)[1:] == ("", f"scratchformer: error: the run's text file {text} changed since "
                                                "training (sha256 differs)\n")
    text.unlink()
    gone = f"scratchformer: error: the run's text file {text} is gone; evaluation needs it\n"
    assert cli(capsys, "eval", run)[2] == gone

    sets = dict(s.split("=", 1) for s in LM_TINY[1::2])
    cfg = make_config("lm", None, {**sets, "train.steps": "20"})
    fit(LMTask.from_text(cfg, corpus.read_text()), tmp_path / "py", progress=False)
    capsys.readouterr()
    code, _, err = cli(capsys, "eval", tmp_path / "py")
    assert code == 2 and err == (f"scratchformer: error: {tmp_path / 'py'} records no text file (trained with "
                                 "LMTask.from_text); evaluation needs one: train with LMTask.from_file or the "
                                 "command line\n")
    assert cli(capsys, "sample", tmp_path / "py", "--tokens", "5")[0] == 0  # sampling needs only the vocabulary


def test_train_config_file_repeats_a_run_and_layers_under_set(tmp_path, rev_run, capsys):
    """`--config` with a run's config.json trains that run again (same config, same
    metrics, line for line); a partial file is applied after the preset, --set after it."""
    again = tmp_path / "again"
    assert cli(capsys, "train", "reverse", "--config", rev_run / "config.json", "--out", again, "--no-progress")[0] == 0
    assert (again / "config.json").read_text() == (rev_run / "config.json").read_text()
    assert (again / "metrics.jsonl").read_text() == (rev_run / "metrics.jsonl").read_text()
    assert overrides_from_file(rev_run, "reverse") == overrides_from_file(rev_run / "config.json", "reverse")

    part = tmp_path / "part.json"
    part.write_text(json.dumps({"model": {"n_layer": 1, "d_model": 32}, "train": {"steps": 9, "seed": 4}}))
    code, out, _ = cli(capsys, "train", "reverse", "--config", part, "--set", "train.seed=5", "--dry-run",
                       "--set", "optim.warmup_steps=2")
    assert code == 0, out
    cfg = make_config("reverse", None, {**overrides_from_file(part, "reverse"), "train.seed": "5",
                                        "optim.warmup_steps": "2"})
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.train.steps, cfg.train.seed) == (1, 32, 9, 5)
    preset = make_config("reverse")
    assert (cfg.model.n_head, cfg.train.batch_size) == (preset.model.n_head, preset.train.batch_size)
    assert "(1+1 layers x 32, 4 heads, context 22, float32); 9 steps of 128 sequences" in out, out
