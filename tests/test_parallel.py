"""Scale-out proofs on CPU: 4 fake devices (data parallel and FSDP) and two processes
on 127.0.0.1 (reading a text, or streaming token files) train exactly like one device;
checkpoints move between device counts."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from scratchformer import checkpoint as ckpt
from scratchformer.errors import UsageError

from conftest import assert_params_close, run_cli

ARGS = ["--steps", "20", "--no-progress", "--set", "model.n_layer=2", "--set", "model.d_model=32",
        "--set", "model.n_head=2", "--set", "model.d_ff=64", "--set", "model.block_size=16",
        "--set", "train.batch_size=8", "--set", "optim.warmup_steps=5", "--set", "train.eval_every=10",
        "--set", "train.checkpoint_every=10", "--set", "train.steps_per_call=5", "--set", "model.dropout=0.0",
        "--set", "data.eval_windows=8", "--set", "train.keep_checkpoints=5",
        # float32 products: with bfloat16 ones (the presets' auto on a CPU with AMX) a float32
        # difference in the order of a sum can round a product's input to the neighbouring
        # bfloat16 value, and N devices then agree with one to bfloat16's rounding, not 1e-5.
        "--set", "model.products=float32"]


def devices(n):
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "tiny.txt"
    p.write_text("Now is the winter of our discontent made glorious summer by this sun of York.\n" * 40)
    return p


def train(corpus, out, n_devices, *extra):
    r = run_cli("train", "lm", "--data", corpus, "--out", out, *ARGS, *extra, env=devices(n_devices))
    assert r.returncode == 0, r.stderr
    return out


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r]), np.array([r["val_loss"] for r in rows if "val_loss" in r])


def params(out, step=20):
    tensors, _ = ckpt.read(ckpt.step_path(out, step))
    return {k: v for k, v in tensors.items() if k.startswith("params.")}


def assert_same_run(a, b, rtol=1e-5):
    la, va = losses(a)
    lb, vb = losses(b)
    assert len(la) == len(lb) == 20
    np.testing.assert_allclose(la, lb, rtol=rtol)
    np.testing.assert_allclose(va, vb, rtol=rtol)
    assert_params_close(params(a), params(b), rtol)


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    return train(corpus, tmp_path_factory.mktemp("p") / "one", 1)


def test_data_parallel_on_4_devices_equals_1(corpus, single, tmp_path):
    out = train(corpus, tmp_path / "dp", 4)
    assert_same_run(single, out)
    s = json.loads((out / "summary.json").read_text())
    assert s["devices"] == 4 and s["state_bytes_per_device_max"] == s["state_bytes_total"]  # replicated


def test_fsdp_on_4_devices_equals_1_and_shards_memory(corpus, single, tmp_path):
    out = train(corpus, tmp_path / "fsdp", 4, "--fsdp")
    assert_same_run(single, out)
    s = json.loads((out / "summary.json").read_text())
    assert s["fsdp"] and s["devices"] == 4
    # Every large array is split 4 ways; only LayerNorm vectors, biases that do not
    # divide, the step and the rng stay whole.
    assert s["state_bytes_per_device_max"] <= 0.3 * s["state_bytes_total"], s


def test_fsdp_of_a_muon_run_on_4_devices_equals_1(corpus, tmp_path):
    """optim.name=muon: the hybrid state (None at the other optimizer's leaves) is sharded
    like the rest; the orthogonalised updates of sharded matrices are the same numbers."""
    muon = ["--set", "optim.name=muon"]
    one = train(corpus, tmp_path / "one", 1, *muon)
    out = train(corpus, tmp_path / "fsdp", 4, "--fsdp", *muon)
    assert_same_run(one, out)
    s = json.loads((out / "summary.json").read_text())
    assert s["state_bytes_per_device_max"] <= 0.3 * s["state_bytes_total"], s
    tensors, _ = ckpt.read(ckpt.step_path(out, 20))
    assert "opt_state.muon.mu.blocks.1.attn.qkv.w" in tensors


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("streamed", [False, True])
def test_two_processes_on_localhost_equal_one(corpus, single, tmp_path, streamed):
    """Also with the text as token files streamed from disk (each process reading its
    own devices' rows): the same batches, so the same run as one device on the text."""
    out = tmp_path / "mp"
    port = _free_port()
    data, extra = str(corpus), []
    if streamed:
        from scratchformer.data.tokens import prepare
        prepare([corpus], tmp_path / "tok")
        data, extra = str(tmp_path / "tok"), ["--set", "data.stream=on"]
    procs = []
    for pid in range(2):
        cmd = [sys.executable, "-m", "scratchformer", "train", "lm", "--data", data, "--out", str(out),
               *ARGS, *extra, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(pid)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, **devices(2)}))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, e) in zip(procs, results):
        assert p.returncode == 0, e
    assert "run folder" in results[0][0] and "run folder" not in results[1][0]  # only process 0 reports
    assert_same_run(single, out)
    s = json.loads((out / "summary.json").read_text())
    assert s["processes"] == 2 and s["devices"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        ["best.safetensors", "step_00000010.safetensors", "step_00000020.safetensors"]


@pytest.mark.parametrize("first,second", [(4, 1), (1, 4)])
def test_checkpoint_moves_between_device_counts(corpus, single, tmp_path, first, second):
    out = train(corpus, tmp_path / "move", first)
    # Forget everything after step 10, then resume on the other device count.
    ckpt.step_path(out, 20).unlink()
    (out / "checkpoints" / "best.safetensors").unlink()
    r = run_cli("train", "lm", "--data", corpus, "--out", out, "--resume", "--no-progress", env=devices(second))
    assert r.returncode == 0, r.stderr
    assert_same_run(single, out)


def test_waiting_for_the_coordinator_ends_in_one_line():
    """A process other than 0 waits for the coordinator's port; JAX's own wait ends in
    a C++ abort (exit 134), ours in a UsageError that names the address."""
    from scratchformer.parallel import wait_for_coordinator

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        wait_for_coordinator("127.0.0.1", srv.getsockname()[1], timeout=5)  # returns at once
        port = srv.getsockname()[1]
    with pytest.raises(UsageError, match=rf"--coordinator 127.0.0.1:{port}: nothing accepted a connection there "
                                         r"within 0.6 s"):
        wait_for_coordinator("127.0.0.1", port, timeout=0.6)
    with pytest.raises(UsageError, match="cannot resolve 'no.such.host.invalid'"):
        wait_for_coordinator("no.such.host.invalid", 1234)


def test_a_coordinator_port_in_use_is_one_line(corpus):
    """JAX's coordinator on a port something else listens on crashed process 0 (a failed
    bind, then a segmentation fault); it is refused first with a line naming the port."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        r = run_cli("train", "lm", "--data", corpus, *ARGS, "--coordinator", f"127.0.0.1:{port}",
                    "--num-processes", "2", "--process-id", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"scratchformer: error: --coordinator 127.0.0.1:{port}: port {port} is in use on this machine; give "
        "process 0 and the others another port"], r.stderr


START = """import os, signal, sys, time
from scratchformer.errors import ScratchformerError
from scratchformer.parallel import initialize_distributed
try:
    initialize_distributed(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
except ScratchformerError as e:
    print(e)
    sys.exit(2)
if sys.argv[4] == "term":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
print("running")
"""


def test_sigterm_stops_a_distributed_process_and_process_counts_must_agree():
    """jax.distributed.initialize installs a SIGTERM handler that only logs the signal, so a
    multi-process run trained on; the process's own handler is put back. And a process
    told another --num-processes than the coordinator's is refused, naming both."""
    def start(port, n, pid, then):
        return subprocess.Popen([sys.executable, "-c", START, f"127.0.0.1:{port}", str(n), str(pid), then],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p = start(_free_port(), 1, 0, "term")
    out, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGTERM and "running" not in out, (out, err)
    port = _free_port()
    first, second = start(port, 2, 0, "stay"), start(port, 3, 1, "stay")
    out, err = second.communicate(timeout=120)
    first.kill()
    first.communicate()
    assert second.returncode == 2 and out.strip() == (
        f"--num-processes=3, but the coordinator 127.0.0.1:{port} started 2 processes: give every process "
        "the same --num-processes"), (out, err)
