"""Checkpoints: the whole training state as one safetensors file, run metadata as JSON
inside its header. No pickle anywhere.

A file holds every leaf of the TrainState pytree under a readable dotted name
(`params.blocks.0.attn.qkv.w`, `opt_state.mu.embed.tokens`, `step`, `rng`) and a
header entry "scratchformer" with JSON: format version, config, step, vocabulary,
best validation loss, and a sha256 over the tensors so that a corrupted file is
caught. Writes are atomic (files.py). Restores go into a template built from the config, and every name, shape
and dtype is checked before anything is used.

Files are written and read a tensor at a time (`write_safetensors`, `SafetensorsFile`),
so that a model's weights are never held twice: safetensors' own `save` builds the
whole file as bytes, its `load` takes them whole, and its `safe_open` maps the file,
whose pages then count in the process's memory until it is closed. The bytes written
are those of `safetensors.numpy.save`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import jax
import ml_dtypes  # jax's own dependency: numpy's bfloat16
import numpy as np

from .errors import CheckpointError
from .files import atomic_writer, strict_json
from .parallel import host_value

FORMAT = 1
_STEP_RE = re.compile(r"^step_(\d{8})\.safetensors$")
BEST = "best.safetensors"
CKPT_DIR = "checkpoints"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
# safetensors' dtype names, in the order of its Dtype enum: its writer puts the tensors of
# the later dtypes first (then by name), which write_safetensors does too.
DTYPES = {"BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
          "I16": np.dtype(np.int16), "U16": np.dtype(np.uint16), "F16": np.dtype(np.float16),
          "BF16": np.dtype(ml_dtypes.bfloat16), "I32": np.dtype(np.int32), "U32": np.dtype(np.uint32),
          "F32": np.dtype(np.float32), "F64": np.dtype(np.float64), "I64": np.dtype(np.int64),
          "U64": np.dtype(np.uint64)}
_NAME_OF = {dt: name for name, dt in DTYPES.items()}
_RANK = {name: i for i, name in enumerate(DTYPES)}


def _name(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k)))))
    return ".".join(parts)


def flatten(tree) -> dict[str, object]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_name(p): leaf for p, leaf in leaves}


def _bytes_of(a: np.ndarray) -> np.ndarray:
    """The bytes of an array, as a flat uint8 view (a copy only where it is not C-contiguous)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(_bytes_of(a))
    return h.hexdigest()


def to_host(tree) -> dict[str, np.ndarray]:
    """Gather every leaf to this host as numpy (sharded arrays are gathered whole)."""
    return {name: host_value(leaf) for name, leaf in flatten(tree).items()}


def save(path: Path, state, meta: dict) -> None:
    tensors = to_host(state)
    header = {"format": FORMAT, "sha256": _digest(tensors), **meta}
    write_safetensors(Path(path), tensors, {"scratchformer": strict_json(header)})


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """The file safetensors.numpy.save(tensors, metadata) makes, written atomically a
    tensor at a time."""
    tensors = {name: np.asarray(a) for name, a in tensors.items()}
    for name, a in tensors.items():
        if a.dtype not in _NAME_OF:
            raise ValueError(f"{name} holds {a.dtype}, which safetensors does not store")
    order = sorted(tensors, key=lambda n: (-_RANK[_NAME_OF[tensors[n].dtype]], n))
    entries, offset = {}, 0
    for name in order:
        a = tensors[name]
        entries[name] = {"dtype": _NAME_OF[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    # The header as safetensors writes it: compact JSON (non-ASCII as UTF-8), spaces up to a multiple of 8.
    head = json.dumps({"__metadata__": metadata, **entries}, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)
    with atomic_writer(path) as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for name in order:
            f.write(_bytes_of(tensors[name]))


class SafetensorsFile:
    """An open safetensors file: `entries` (name -> (dtype, shape)), `metadata`, and each
    tensor read on its own with ordinary reads (`file[name]`). A ValueError, naming what
    is wrong, for a file that is not one (cut short, a header that does not add up)."""

    def __init__(self, path):
        self._f = open(path, "rb")
        try:
            size = os.fstat(self._f.fileno()).st_size
            n = int.from_bytes(self._f.read(8), "little")
            if not 0 < n <= min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"header size {n} does not fit a file of {size} bytes")
            header = json.loads(self._f.read(n))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            self.metadata = header.pop("__metadata__", None) or {}
            self._start, self.entries, self._at = 8 + n, {}, {}
            spans = []
            for name, e in header.items():
                if e["dtype"] not in DTYPES:
                    raise ValueError(f"{name} holds {e['dtype']}, not one of {', '.join(DTYPES)}")
                dtype, shape, (begin, end) = DTYPES[e["dtype"]], tuple(e["shape"]), e["data_offsets"]
                if not all(type(d) is int and d >= 0 for d in (*shape, begin, end)):
                    raise ValueError(f"{name}: shape or offsets are not counts")
                if end - begin != math.prod(shape) * dtype.itemsize:
                    raise ValueError(f"{name}: {end - begin} bytes for shape {shape} {dtype}")
                self.entries[name], self._at[name] = (dtype, shape), begin
                spans.append((begin, end))
            covered = 0
            for begin, end in sorted(spans):  # the tensors tile the data, as safetensors requires
                if begin != covered:
                    raise ValueError("tensor data overlaps or leaves gaps")
                covered = end
            if self._start + covered != size:
                raise ValueError(f"the header describes {self._start + covered} bytes, the file has {size}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            self._f.close()
            raise ValueError(str(e) or type(e).__name__) from None
        except BaseException:
            self._f.close()
            raise

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape = self.entries[name]
        a = np.empty(shape, dtype)
        self._f.seek(self._start + self._at[name])
        if self._f.readinto(_bytes_of(a)) != a.nbytes:
            raise ValueError(f"{name}: the file ends inside its data")
        return a

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Load and verify a checkpoint file: (tensors, meta)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with SafetensorsFile(path) as f:
            tensors = {name: f[name] for name in f.entries}
            meta = json.loads(f.metadata["scratchformer"])
        if not isinstance(meta, dict):
            raise ValueError("metadata is not an object")
    except (ValueError, KeyError, TypeError):
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
