"""Checkpoints: the whole training state as one safetensors file, run metadata as JSON
inside its header. No pickle anywhere.

A file holds every leaf of the TrainState pytree under a readable dotted name
(`params.blocks.0.attn.qkv.w`, `opt_state.mu.embed.tokens`, `step`, `rng`) and a
header entry "scratchformer" with JSON: format version, config, step, vocabulary,
best validation loss, and a sha256 over the tensors so that a corrupted file is
caught. Writes are atomic (files.py). Restores go into a template built from the config, and every name, shape
and dtype is checked before anything is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import jax
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load, save as st_save

from .errors import CheckpointError
from .files import atomic_write_bytes, strict_json
from .parallel import host_value

FORMAT = 1
_STEP_RE = re.compile(r"^step_(\d{8})\.safetensors$")
BEST = "best.safetensors"
CKPT_DIR = "checkpoints"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def _name(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))))
    return ".".join(parts)


def flatten(tree) -> dict[str, object]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_name(p): leaf for p, leaf in leaves}


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def to_host(tree) -> dict[str, np.ndarray]:
    """Gather every leaf to this host as numpy (sharded arrays are gathered whole)."""
    return {name: host_value(leaf) for name, leaf in flatten(tree).items()}


def save(path: Path, state, meta: dict) -> None:
    tensors = to_host(state)
    header = {"format": FORMAT, "sha256": _digest(tensors), **meta}
    data = st_save(tensors, metadata={"scratchformer": strict_json(header)})
    atomic_write_bytes(Path(path), data)


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load and verify a checkpoint file: (tensors, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        # safetensors layout: u64 little-endian header size, then the JSON header.
        n = int.from_bytes(raw[:8], "little")
        md = json.loads(raw[8:8 + n]).get("__metadata__") or {}
        meta = json.loads(md["scratchformer"])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except (SafetensorError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, expected {FORMAT}")
    if _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupted (tensor checksum mismatch)")
    return tensors, meta


def read_meta(path: Path) -> dict:
    """A checkpoint's metadata alone, from the safetensors header (tensors neither read
    nor verified: `read` does that)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= min(os.fstat(f.fileno()).st_size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"header size {n}")
            meta = json.loads(json.loads(f.read(n))["__metadata__"]["scratchformer"])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted") from None
    return meta


def subtree(tensors: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    """The tensors under `name.` (a checkpoint's `params.*`), with that prefix taken off."""
    return {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}


def restore(tensors: dict[str, np.ndarray], template, *, source="checkpoint"):
    """Fill `template` (a pytree of arrays or ShapeDtypeStructs) from named tensors,
    checking that names, shapes and dtypes all match."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [_name(p) for p, _ in leaves]
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise CheckpointError(f"{source} does not match the config: missing {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    out = []
    for (_, leaf), name in zip(leaves, names):
        a = tensors[name]
        if tuple(a.shape) != tuple(leaf.shape) or np.dtype(a.dtype) != np.dtype(leaf.dtype):
            raise CheckpointError(f"{source}: {name} has shape {tuple(a.shape)} {a.dtype}, "
                                  f"the config needs {tuple(leaf.shape)} {np.dtype(leaf.dtype)}")
        out.append(a)
    return jax.tree_util.tree_unflatten(treedef, out)


# ---------------------------------------------------------------- run-folder layout
def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.safetensors"


def list_steps(run_dir: Path) -> list[int]:
    d = Path(run_dir) / CKPT_DIR
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for f in os.listdir(d) if (m := _STEP_RE.match(f)))


def latest(run_dir: Path) -> Path | None:
    steps = list_steps(run_dir)
    return step_path(run_dir, steps[-1]) if steps else None


def best(run_dir: Path) -> Path | None:
    p = Path(run_dir) / CKPT_DIR / BEST
    return p if p.is_file() else None


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (the best is separate)."""
    for s in list_steps(run_dir)[:-keep]:
        try:
            step_path(run_dir, s).unlink()
        except FileNotFoundError:
            pass
