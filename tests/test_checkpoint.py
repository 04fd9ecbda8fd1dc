"""Checkpoint format: round trip, and every way a file can be wrong is a clear error."""

import os
import stat

import jax
import numpy as np
import pytest

from scratchformer import checkpoint as ckpt, files
from scratchformer.config import ConfigError
from scratchformer.runconfig import from_dict, make_config
from scratchformer.tasks import ReverseTask
from scratchformer.train import init_state, state_template

OVER = {"model.n_layer": 1, "model.d_model": 16, "model.d_ff": 32, "model.n_head": 2}


@pytest.fixture
def cfg():
    return ReverseTask(make_config("reverse", None, OVER)).cfg


def test_round_trip(cfg, tmp_path):
    state = init_state(cfg)
    path = tmp_path / "c.safetensors"
    ckpt.save(path, state, {"config": cfg.to_dict(), "step": 0})
    tensors, meta = ckpt.read(path)
    assert meta["config"] == cfg.to_dict()
    back = ckpt.restore(tensors, state_template(cfg))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert "params.encoder.blocks.0.attn.qkv.w" in tensors and "opt_state.mu.embed.tokens" in tensors
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left


def test_round_trip_of_a_muon_state(cfg, tmp_path):
    """optim.name=muon: the state is a muon.HybridState whose halves hold None at the other
    optimizer's leaves. None is an empty subtree: no tensor is written for it, and the
    template puts it back, so the restored state has the same tree."""
    from dataclasses import replace
    cfg = replace(cfg, optim=replace(cfg.optim, name="muon"))
    state = init_state(cfg)
    state = state._replace(opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))  # not all zeros
    path = tmp_path / "m.safetensors"
    ckpt.save(path, state, {"config": cfg.to_dict(), "step": 0})
    tensors, _ = ckpt.read(path)
    back = ckpt.restore(tensors, state_template(cfg))
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert {"opt_state.muon.mu.encoder.blocks.0.attn.qkv.w", "opt_state.muon.count",
            "opt_state.adam.nu.encoder.blocks.0.ln1.scale", "opt_state.adam.mu.embed.tokens"} <= tensors.keys()
    assert not any(k.startswith(("opt_state.adam.mu.encoder.blocks.0.attn.qkv.w", "opt_state.muon.mu.embed"))
                   for k in tensors)
    with pytest.raises(ckpt.CheckpointError, match="does not match the config"):
        ckpt.restore(tensors, state_template(replace(cfg, optim=replace(cfg.optim, name="adamw"))))


def test_files_are_safetensors_own_bytes_written_a_tensor_at_a_time(tmp_path):
    """write_safetensors writes what safetensors.numpy.save would (every dtype it stores,
    a scalar, an empty tensor, metadata with escapes), and SafetensorsFile reads it back."""
    import json
    from safetensors.numpy import save as st_save
    rng = np.random.default_rng(0)
    tensors = {f"{name.lower()}.{i}": (rng.standard_normal((3, i + 1)) * 10).astype(dt)
               for i, (name, dt) in enumerate(ckpt.DTYPES.items())}
    tensors.update({"z": np.zeros((0, 2), np.float32), "step": np.array(7, np.int64), "a.b": np.ones(3, np.float32)})
    metadata = {"scratchformer": json.dumps({"x": "é\"\n\x01 \u2028"}, ensure_ascii=False)}
    ckpt.write_safetensors(tmp_path / "w.safetensors", tensors, metadata)
    assert (tmp_path / "w.safetensors").read_bytes() == st_save(tensors, metadata=metadata)
    with ckpt.SafetensorsFile(tmp_path / "w.safetensors") as f:
        assert f.metadata == metadata and f.entries.keys() == tensors.keys()
        for name, a in tensors.items():
            assert f[name].dtype == a.dtype
            np.testing.assert_array_equal(f[name], a)


def test_truncated_and_corrupted_files(cfg, tmp_path):
    path = tmp_path / "c.safetensors"
    ckpt.save(path, init_state(cfg), {"config": cfg.to_dict()})
    raw = path.read_bytes()
    assert ckpt.read_meta(path) == ckpt.read(path)[1]
    for name, data in [("trunc", raw[: len(raw) // 2]), ("header", raw[:20]), ("empty", b""),
                       ("garbage", b"garbage, not a checkpoint"), ("huge header size", b"\xff" * 8 + raw[8:])]:
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(data)
        with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
            ckpt.read(p)
        if name != "trunc":  # read_meta reads the header alone, which a cut in the tensors leaves whole
            with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
                ckpt.read_meta(p)
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # inside the tensor data: only the checksum can see it
    p = tmp_path / "flip.safetensors"
    p.write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.read(p)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.read(tmp_path / "missing.safetensors")


def test_shape_mismatch_is_an_error(cfg, tmp_path):
    path = tmp_path / "c.safetensors"
    ckpt.save(path, init_state(cfg), {"config": cfg.to_dict()})
    tensors, _ = ckpt.read(path)
    other = ReverseTask(make_config("reverse", None, {**OVER, "model.d_model": 32})).cfg
    with pytest.raises(ckpt.CheckpointError, match="shape"):
        ckpt.restore(tensors, state_template(other))
    deeper = ReverseTask(make_config("reverse", None, {**OVER, "model.n_layer": 2})).cfg
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.restore(tensors, state_template(deeper))


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["model"].update(d_model=10**12), "larger than the limit"),
    (lambda d: d["model"].update(n_layer="4"), "type str"),
    (lambda d: d["model"].update(n_layer=4.5), "type float"),
    (lambda d: d["train"].update(batch_size=True), "type bool"),
    (lambda d: d["model"].update(surprise=1), "unknown config key"),
    (lambda d: d.update(extra={}), "unknown config section"),
    (lambda d: d.update(task="translate"), "task="),
    (lambda d: d["optim"].update(lr=-1.0), "optim.lr"),
])
def test_tampered_config_rejected_before_allocation(cfg, mutate, match):
    d = cfg.to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        from_dict(d)


def test_prune_keeps_latest(tmp_path):
    (tmp_path / ckpt.CKPT_DIR).mkdir()
    for s in (10, 20, 30, 40):
        ckpt.step_path(tmp_path, s).write_bytes(b"x")
    ckpt.prune(tmp_path, 2)
    assert ckpt.list_steps(tmp_path) == [30, 40]
    assert ckpt.latest(tmp_path).name == "step_00000040.safetensors"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_and_folders_have_ordinary_permissions(tmp_path, umask):
    """What the atomic writers leave is what open() and mkdir() would make under the umask,
    not the temporary file's private 0600 (an exported folder others cannot read)."""
    old = os.umask(umask)
    try:
        files.atomic_write_bytes(tmp_path / "a.json", b"{}")
        with files.atomic_folder(tmp_path / "out") as tmp:
            files.atomic_write_bytes(tmp / "b.bin", b"x")
        (tmp_path / "plain").write_bytes(b"")
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == mode(tmp_path / "out" / "b.bin") == mode(tmp_path / "plain") == 0o666 & ~umask
    assert mode(tmp_path / "out") == mode(tmp_path / "plain_dir") == 0o777 & ~umask
