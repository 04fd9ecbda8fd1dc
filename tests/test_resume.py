"""Reliability through the CLI: a run killed with SIGKILL at random moments (one of
them while a checkpoint is being written) and resumed each time ends with the same
metrics.jsonl, byte for byte, and the same parameters as an uninterrupted run; so
does one stopped by Ctrl-C and by SIGTERM (which save a checkpoint first). Also:
a resume checks its text file, a streamed run resumes as exactly, and a NaN stops training with a clear message and
keeps the last good checkpoint."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scratchformer import checkpoint as ckpt
from scratchformer.data.tokens import prepare
from scratchformer.runconfig import make_config
from scratchformer.stop import StopRequest
from scratchformer.tasks import LMTask
from scratchformer.train import init_state, make_train_step

from conftest import run_cli

ARGS = ["--steps", "200", "--no-progress", "--set", "model.n_layer=1", "--set", "model.d_model=32",
        "--set", "model.n_head=2", "--set", "model.d_ff=64", "--set", "model.block_size=16",
        "--set", "train.batch_size=8", "--set", "optim.warmup_steps=5", "--set", "train.eval_every=20",
        "--set", "train.checkpoint_every=10", "--set", "train.steps_per_call=5", "--set", "model.dropout=0.1",
        "--set", "data.eval_windows=8"]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run that the interrupted ones must reproduce."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    r = run_cli("train", "lm", "--data", corpus, "--out", ref, *ARGS)
    assert r.returncode == 0, r.stderr
    return ref


# `python -m scratchformer`, with Ctrl-C armed as in an interactive shell even where
# the shell that started the tests ignores SIGINT (children inherit that).
_CLI = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'scratchformer'; runpy.run_module('scratchformer', run_name='__main__')")


def _start(corpus, out, resume, data=True, args=ARGS, extra=()):
    cmd = [sys.executable, "-c", _CLI, "train", "lm", *(["--data", str(corpus)] if data else []),
           "--out", str(out), *args, *extra, *(["--resume"] if resume else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _assert_same_run(out, ref):
    assert (out / "metrics.jsonl").read_bytes() == (ref / "metrics.jsonl").read_bytes()
    a, _ = ckpt.read(ckpt.latest(ref))
    b, _ = ckpt.read(ckpt.latest(out))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not [p for p in (out / ckpt.CKPT_DIR).iterdir() if p.name.endswith(".tmp")]


def _rows(out):
    path = out / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _kill_when(proc, ready, limit_s=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and proc.poll() is None and not ready():
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _saving(out):
    d = out / ckpt.CKPT_DIR
    return d.is_dir() and any(p.name.endswith(".tmp") for p in d.iterdir())


def test_kill9_and_resume_is_exact(corpus, tmp_path, reference):
    out = tmp_path / "killed"
    rng = random.Random(0)
    kills, resume = 0, False
    for attempt in range(8):
        proc = _start(corpus, out, resume)
        if attempt == 0:  # while a checkpoint is being written (else soon after the first rows)
            _kill_when(proc, lambda: _saving(out) or _rows(out) > 45)
        elif attempt < 4:  # at a random point of the remaining steps
            target = _rows(out) + rng.randint(5, 50)
            _kill_when(proc, lambda: _rows(out) >= target)
        else:
            proc.wait(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        kills += 1
        resume = True
    assert proc.returncode == 0 and kills >= 3, kills
    _assert_same_run(out, reference)


def test_kill9_and_resume_in_epoch_order_is_exact(corpus, tmp_path):
    """data.order=epoch: the windows of an epoch, their shift and order are functions of
    the run's key and the step, so a run killed twice resumes to the uninterrupted one."""
    args = [*ARGS, "--set", "data.order=epoch", "--steps", "80"]
    ref = tmp_path / "ref"
    assert run_cli("train", "lm", "--data", corpus, "--out", ref, *args).returncode == 0
    out, kills = tmp_path / "killed", 0
    for attempt in range(4):
        proc = _start(corpus, out, attempt > 0, args=args)
        if attempt < 2:
            target = _rows(out) + 15
            _kill_when(proc, lambda: _rows(out) >= target)
        else:
            proc.wait(timeout=300)
        if proc.returncode == 0:
            break
        kills += 1
    assert proc.returncode == 0 and kills == 2, kills
    _assert_same_run(out, ref)


def test_kill9_and_resume_of_a_streamed_run_is_exact(corpus, tmp_path, reference):
    """The same text as token files, its batches streamed from disk: killed twice and
    resumed, the run ends as the uninterrupted text-file run (the same batches, drawn from
    the same keys), byte for byte."""
    prepare([corpus], tmp_path / "tok")
    out, resume = tmp_path / "streamed", False
    for attempt in range(3):
        proc = _start(tmp_path / "tok", out, resume, extra=("--set", "data.stream=on"))
        if attempt < 2:
            target = _rows(out) + 30
            _kill_when(proc, lambda: _rows(out) >= target)
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
            resume = True
        else:
            assert proc.wait(timeout=300) == 0, proc.stderr.read()
    _assert_same_run(out, reference)


def _train_steps(out) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_ctrl_c_and_sigterm_save_and_resume_is_exact(corpus, tmp_path, reference):
    """The first SIGINT / SIGTERM saves a checkpoint at the step reached and exits
    130 / 143 with a one-line message; resumed (the second time without --data: the
    run's own file), the run ends identical to the uninterrupted one."""
    out = tmp_path / "stopped"
    for sig, code, after_rows, resume in ((signal.SIGINT, 130, 23, False), (signal.SIGTERM, 143, 90, True)):
        proc = _start(corpus, out, resume, data=not resume)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and proc.poll() is None and _rows(out) < after_rows:
            time.sleep(0.002)
        proc.send_signal(sig)
        err = proc.communicate(timeout=120)[1]
        assert proc.returncode == code, err
        line = err.strip().splitlines()[-1]
        m = re.fullmatch(rf"scratchformer: {sig.name}: stopped at step (\d+), saved (\S+); "
                         rf"to continue, run the same command with --out {re.escape(str(out))} --resume", line)
        assert m and "Traceback" not in err, err
        step = int(m.group(1))
        assert 0 < step < 200 and step % 5 == 0, step  # a whole jitted call of train.steps_per_call=5
        assert m.group(2) == str(ckpt.step_path(out, step)) and ckpt.latest(out) == ckpt.step_path(out, step)
        assert _train_steps(out) == list(range(1, step + 1))
    r = run_cli("train", "lm", "--data", corpus, "--out", out, *ARGS, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"; trained steps {step}-200 in " in r.stdout, r.stdout  # the time is this part's
    _assert_same_run(out, reference)


# NorMuon, and a multi-token prediction module (its matrices Muon's too)
NORMUON = ["--set", "optim.muon_coeffs=polar_express", "--set", "optim.normuon_beta2=0.9", "--set",
           "model.mtp_depth=1"]


@pytest.mark.parametrize("variant", [[], NORMUON], ids=["muon", "normuon_mtp"])
def test_muon_run_with_ema_stopped_and_resumed_is_exact(corpus, tmp_path, variant):
    """optim.name=muon under the wsd schedule, with a moving average of the weights: its
    state (Muon momentum on the blocks' matrices, AdamW moments elsewhere, None at the
    other's leaves; NorMuon's second moments and the prediction module's where they are on) and the average are
    checkpointed whole, and a run stopped by SIGTERM and resumed ends identical to an
    uninterrupted one."""
    args = [*ARGS, "--set", "optim.name=muon", "--set", "optim.schedule=wsd", "--set", "train.ema=0.9", *variant]
    ref = tmp_path / "ref"
    r = run_cli("train", "lm", "--data", corpus, "--out", ref, *args)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "stopped"
    proc = _start(corpus, out, False, args=args)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120 and proc.poll() is None and _rows(out) < 60:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    step = int(re.search(r"stopped at step (\d+)", err).group(1))
    assert 0 < step < 200
    tensors, _ = ckpt.read(ckpt.latest(out))
    assert {"opt_state.muon.mu.blocks.0.mlp.fc.w", "opt_state.adam.nu.embed.tokens", "ema.blocks.0.mlp.fc.w",
            "ema.embed.tokens"} <= tensors.keys()
    nu = tensors.get("opt_state.muon.nu.blocks.0.mlp.fc.w")  # NorMuon's: one per neuron of the 32 x 64 matrix
    assert nu.shape == (64,) if variant else nu is None
    assert ("opt_state.muon.mu.mtp.blocks.0.proj.w" in tensors) == bool(variant)
    r = run_cli("train", "lm", "--data", corpus, "--out", out, *args, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"; trained steps {step}-200 in " in r.stdout, r.stdout
    _assert_same_run(out, ref)


def test_resume_checks_the_text_it_continues_on(corpus, tmp_path):
    """Another text is refused; a moved file must be named again; the same text under
    another name is accepted."""
    out, mine = tmp_path / "run", tmp_path / "mine.txt"
    mine.write_text(corpus.read_text())
    args = [a if a != "200" else "10" for a in ARGS]
    assert run_cli("train", "lm", "--data", mine, "--out", out, *args).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])  # same characters, another text
    r = run_cli("train", "lm", "--data", other, "--out", out, *args, "--resume")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"scratchformer: error: --data {other.resolve()}: cannot resume on it, the run was trained on "
        f"{mine.resolve()} (sha256 differs)"), r.stderr
    moved = mine.rename(tmp_path / "moved.txt")
    r = run_cli("train", "lm", "--out", out, *args, "--resume")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"scratchformer: error: --resume: the run's text file {mine.resolve()} is gone; "
        "pass --data FILE with the same text"), r.stderr
    r = run_cli("train", "lm", "--data", moved, "--out", out, *args, "--resume")
    assert r.returncode == 0 and "the run had already trained its 10 steps" in r.stdout, r.stderr


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(corpus, tmp_path):
    """A learning rate of 1e30 overflows the weights after the first step, so the second is
    not finite: training stops with exit 1 and one line naming the last good checkpoint,
    which (with a checkpoint every step, one step a call) is step 1's, loadable and finite."""
    out = tmp_path / "nan"
    args = [a if a != "optim.warmup_steps=5" else "optim.warmup_steps=0" for a in ARGS]
    r = run_cli("train", "lm", "--data", corpus, "--out", out, *args, "--set", "optim.lr=1e30",
                "--set", "optim.min_lr=0", "--set", "train.checkpoint_every=1", "--set", "train.steps_per_call=1")
    assert r.returncode == 1, r.stderr
    assert "not finite at step 2 " in r.stderr and "Traceback" not in r.stderr, r.stderr
    last = ckpt.latest(out)
    assert last == ckpt.step_path(out, 1) and f"Last good checkpoint: {last} " in r.stderr, r.stderr
    tensors, _ = ckpt.read(last)
    assert all(np.all(np.isfinite(v)) for v in tensors.values() if v.dtype.kind == "f")


def test_skip_nonfinite_option_keeps_going(corpus, tmp_path):
    """With train.skip_nonfinite, a bad step leaves params unchanged and is marked."""
    import jax
    import jax.numpy as jnp

    cfg = make_config("lm", "cpu-quick-classic", {"model.n_layer": 1, "model.d_model": 16, "model.n_head": 2,
                                                  "model.d_ff": 32, "model.block_size": 8, "train.skip_nonfinite": True})
    task = LMTask.from_text(cfg, corpus.read_text())
    state = init_state(task.cfg)
    batch = task.sample_batch(task.device_data(), jax.random.PRNGKey(0), 4)
    poisoned = jax.tree.map(lambda a: a, state.params)
    poisoned["ln_f"]["scale"] = poisoned["ln_f"]["scale"].at[0].set(jnp.nan)
    new, m = jax.jit(make_train_step(task.cfg))(state._replace(params=poisoned), batch)
    assert not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(poisoned)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stop_request_keeps_ignored_signals_and_rearms_after_the_first():
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a background job of a script
        stop = StopRequest().install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        stop.restore()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stop = StopRequest().install()
        os.kill(os.getpid(), signal.SIGINT)  # caught: no KeyboardInterrupt
        for _ in range(100):
            if stop.signum is not None:
                break
            time.sleep(0.001)
        assert stop.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second one stops at once
        assert StopRequest(enabled=False).install().signum is None
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
