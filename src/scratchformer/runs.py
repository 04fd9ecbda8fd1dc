"""Opening a saved run folder: its config, its checkpoint and its task (with the data
the task needs), checked before anything is used."""

from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt
from .config import ConfigError, from_dict
from .data import text
from .data.errors import DataError
from .tasks import LMTask, task_from_meta
from .train import state_template


def checkpoint_path(run_dir, which: str = "best") -> Path:
    """The checkpoint to open: `run_dir` itself where it is a .safetensors file (every
    checkpoint carries its config), else the run folder's best one (or its latest)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        if run_dir.suffix != ".safetensors":
            raise ckpt.CheckpointError(f"{run_dir} is a file, not a run folder or a .safetensors checkpoint")
        return run_dir
    if not run_dir.is_dir():
        raise ckpt.CheckpointError(f"run folder {run_dir} does not exist")
    path = (ckpt.best(run_dir) if which == "best" else None) or ckpt.latest(run_dir)
    if path is None:
        inside = run_dir.name == ckpt.CKPT_DIR and any(run_dir.glob("*.safetensors"))
        hint = f"; the run folder is {run_dir.parent}, or name one checkpoint file" if inside else ""
        raise ckpt.CheckpointError(f"{run_dir} has no checkpoint (expected {run_dir}/{ckpt.CKPT_DIR}/*.safetensors)"
                                   + hint)
    return path


def load(run_dir, *, which: str = "best", with_data: bool = False):
    """Returns (task, params, meta). `run_dir`: a run folder (its best checkpoint, or its
    latest without one), or one checkpoint file. with_data also reloads an LM's text
    for evaluation."""
    path = checkpoint_path(run_dir, which)
    tensors, meta = ckpt.read(path)
    try:
        cfg = from_dict(meta.get("config"))
    except ConfigError as e:
        raise ckpt.CheckpointError(f"checkpoint {path} has an invalid config: {e}") from None
    task = task_from_meta(cfg, meta.get("task_meta") or {})
    state = ckpt.restore(tensors, state_template(task.cfg), source=str(path))
    if with_data and isinstance(task, LMTask):
        task = with_text(task, meta, run_dir)
    return task, state.params, meta


def with_text(task: LMTask, meta: dict, run_dir) -> LMTask:
    """The LM task again with the text it trained on (its splits), after checking that
    the file is still there and unchanged; a one-line DataError otherwise."""
    d = meta.get("data") or {}
    if not d.get("path"):
        raise DataError(f"{run_dir} records no text file (trained with LMTask.from_text); evaluation needs "
                        "one: train with LMTask.from_file or the command line")
    src = Path(str(d["path"]))
    if not src.is_file():
        raise DataError(f"the run's text file {src} is gone; evaluation needs it")
    source = text.file_identity(src)
    if source["sha256"] != d.get("sha256"):
        raise DataError(f"the run's text file {src} changed since training (sha256 differs)")
    fresh = LMTask.from_text(task.cfg, text.read_text(src))
    if fresh.tokenizer.chars != task.tokenizer.chars:
        raise DataError(f"the vocabulary of {src} differs from the checkpoint's")
    fresh.source = source
    return fresh
