"""Run folders: the files of one run (config.json, metrics.jsonl, summary.json,
checkpoints/), and reading a saved run again: its config, its checkpoint and its task
(a LoRA run's with the frozen weights it adapts), its metrics and summary, each checked
before anything is used."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

from . import checkpoint as ckpt
from . import lora
from .errors import CheckpointError, ConfigError, DataError
from .files import atomic_write_bytes, strict_json
from .runconfig import from_dict, from_file
from .tasks import task_class
from .train import state_template


class RunFolder:
    """The files of one run: config.json, metrics.jsonl, summary.json, checkpoints/."""

    def __init__(self, path):
        self.path = Path(path)
        self.metrics = self.path / "metrics.jsonl"

    def prepare(self, *, resume: bool) -> None:
        try:
            (self.path / ckpt.CKPT_DIR).mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise DataError(f"{self.path} cannot be written ({e.strerror})", option="out") from None
        if not resume and (ckpt.latest(self.path) or self.metrics.exists()):
            raise CheckpointError(f"{self.path} already holds a run; resume it (--resume) or choose another run folder",
                                  option="out")
        # Temp files of saves that a kill interrupted (the renamed files are complete).
        for d in (self.path, self.path / ckpt.CKPT_DIR):
            for stale in d.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, strict_json(obj, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.path / name, text.encode())

    def truncate_metrics(self, step: int) -> None:
        """Keep only rows up to `step` (those covered by the checkpoint being resumed);
        unreadable lines (one cut short by a kill) go too."""
        if not self.metrics.exists():
            return
        rows, _ = metrics_rows(self.metrics)
        kept = "".join(strict_json(r) + "\n" for r in rows if r["step"] <= step)
        atomic_write_bytes(self.metrics, kept.encode())

    def append(self, rows: list[dict]) -> None:
        with open(self.metrics, "a") as f:
            f.write("".join(strict_json(r) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())


def metrics_rows(path) -> tuple[list[dict], list[int]]:
    """The rows of a metrics.jsonl, and the numbers of the lines that are not rows: a
    row is a JSON object with an integer "step" >= 0 whose other values are numbers,
    null (not finite) or true/false ("skipped"). An unreadable last line without its
    newline is a row still being written (or cut short by a kill): left out, not bad."""
    lines = Path(path).read_text(errors="replace").split("\n")
    rows, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if (isinstance(row, dict) and type(row.get("step")) is int and row["step"] >= 0
                and all(v is None or type(v) in (int, float, bool) for k, v in row.items() if k != "step")):
            rows.append(row)
        elif number < len(lines):  # the last element is "" after a final newline
            bad.append(number)
    return rows, bad


def checkpoint_path(run_dir, which: str = "best") -> Path:
    """The checkpoint to open: `run_dir` itself where it is a .safetensors file (every
    checkpoint carries its config), else the run folder's best one (or its latest)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        if run_dir.suffix != ".safetensors":
            raise CheckpointError(f"{run_dir} is a file, not a run folder or a .safetensors checkpoint")
        return run_dir
    if not run_dir.is_dir():
        kind = "checkpoint file" if run_dir.suffix == ".safetensors" else "run folder"
        raise CheckpointError(f"{kind} {run_dir} does not exist")
    path = (ckpt.best(run_dir) if which == "best" else None) or ckpt.latest(run_dir)
    if path is None:
        inside = run_dir.name == ckpt.CKPT_DIR and any(run_dir.glob("*.safetensors"))
        hint = f"; the run folder is {run_dir.parent}, or name one checkpoint file" if inside else ""
        raise CheckpointError(f"{run_dir} has no checkpoint (expected {run_dir}/{ckpt.CKPT_DIR}/*.safetensors)"
                              + hint)
    return path


def config_of(meta: dict, path):
    """The RunConfig a checkpoint's metadata holds (either config format)."""
    try:
        return from_dict(meta.get("config"))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path} has an invalid config: {e}") from None


def load(run_dir, *, which: str = "best", with_data: bool = False):
    """Returns (task, params, meta); params are the moving average of a run with train.ema
    (what it evaluated), and a LoRA run's adapters merged into the weights they adapt
    (`base_weights`). `run_dir`: a run folder (its best checkpoint, or its latest
    without one), or one checkpoint file: a training state's, or weights alone (an
    imported model's). with_data also reloads the data the run trained on (an LM's text)
    for evaluation."""
    path = checkpoint_path(run_dir, which)
    tensors, meta = ckpt.read(path)
    cfg = config_of(meta, path)
    task = task_class(cfg.task).from_meta(cfg, meta.get("task_meta") or {})
    # A training state of a run with train.ema holds the average (what it evaluated); a
    # weights-only file (an import, save_weights_run) holds the model's weights as `params`.
    weights_only = not ckpt.subtree(tensors, "opt_state")
    weights = "ema" if task.cfg.train.ema and not weights_only else "params"
    params = ckpt.restore(ckpt.subtree(tensors, weights), state_template(task.cfg).params, source=str(path))
    if task.cfg.lora.rank:
        params = lora.merge(lora_base(task.cfg, meta, path)[0], params, task.cfg.lora)
    if with_data:
        task = task.with_training_data(meta, run_dir)
    return task, params, meta


def initial_params(cfg, params):
    """A source run's weights fitted to `cfg`, the run that starts from them: a learned
    position table cut to model.block_size rows."""
    if cfg.model.positions == "learned":
        embed = params["embed"]
        params = {**params, "embed": {**embed, "positions": embed["positions"][:cfg.model.block_size]}}
    return params


def base_weights(cfg, recorded: dict | None = None):
    """(params, identity): the weights of the run train.init_from names (merged, if it is
    a LoRA run itself) fitted to `cfg`, and their identity {"path", "sha256"}: the
    checkpoint file, absolute, and the digest of its tensors. `recorded`: the identity
    a LoRA run's checkpoints hold; that file is read, and one-line errors say when it
    is gone or holds other weights than the run started from (its checkpoints hold the
    adapters alone, as PEFT's adapter files do, and need the weights they adapt)."""
    path = recorded["path"] if recorded else cfg.train.init_from
    if recorded and not Path(path).is_file():
        raise CheckpointError(f"{path}, the weights this LoRA run adapts, is gone: its checkpoints hold its "
                              "adapters only and need that file as it was")
    _, params, meta = load(path)
    if recorded and meta.get("sha256") != recorded.get("sha256"):
        raise CheckpointError(f"{path} changed since this LoRA run started from it (sha256 differs); its adapters "
                              "fit the weights it held then")
    return initial_params(cfg, params), {"path": str(checkpoint_path(path).resolve()), "sha256": meta.get("sha256")}


def lora_base(cfg, meta: dict, path):
    """base_weights of the LoRA run whose checkpoint `path` has metadata `meta`."""
    recorded = meta.get("base")
    if not (isinstance(recorded, dict) and isinstance(recorded.get("path"), str)):
        raise CheckpointError(f"checkpoint {path} is a LoRA run's but does not name the weights it adapts")
    return base_weights(cfg, recorded)


def not_a_folder(path) -> str | None:
    """Why `path` cannot be a run folder to resume ("does not exist", "is a file..."), or None."""
    path = Path(path)
    return None if path.is_dir() else "is a file, not a run folder" if path.exists() else "does not exist"


def saved_config(run_dir, task: str):
    """The config of the run in `run_dir` (its config.json), to continue exactly that run."""
    path = Path(run_dir) / "config.json"
    why = not_a_folder(run_dir)
    if why:
        raise CheckpointError(f"cannot resume: {run_dir} {why}")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from (no config.json)")
    cfg = from_file(path)
    if cfg.task != task:
        raise CheckpointError(f"{run_dir} is a {cfg.task!r} run, not {task!r}")
    return cfg


def training_source(run_dir) -> str | None:
    """The data file the run in `run_dir` trained on, as its latest checkpoint records it
    (None for generated data or before the first checkpoint)."""
    last = ckpt.latest(run_dir)
    return (ckpt.read_meta(last).get("data") or {}).get("path") if last else None


def best_checkpoint_note(run_dir, summary: dict) -> str | None:
    """Where `sample` and `eval` will not load the weights the summary's loss is of: the
    best periodic checkpoint is from an earlier step than the last (the run overfitted
    after it). None where they are the same step."""
    best = ckpt.best(run_dir)
    if best is None:
        return None
    meta = ckpt.read_meta(best)
    if meta.get("step") == summary["steps"]:
        return None
    return (f"sample and eval load the best checkpoint, step {meta['step']} (periodic validation loss "
            f"{meta['best_val_loss']:.4f}), not the last step's weights")


def report(run_dir, summary: dict) -> str:
    """What `train` prints at the end: the run folder, the summary, and where sample and
    eval will load an earlier step's weights."""
    best = best_checkpoint_note(run_dir, summary)
    return f"run folder: {run_dir}\n{describe(summary)}" + (f"\n{best}" if best else "")


def describe(summary: dict) -> str:
    """One line for a finished run's summary (or an evaluation's result)."""
    line = task_class(summary["task"]).describe(summary)
    if "train_time_s" in summary:  # a resumed run timed only the steps after its checkpoint
        r, n = summary.get("resumed_from"), summary["steps"]
        steps = f"steps {r}-{n}" if r else f"{n} steps"
        line += (f"; trained {steps} in {summary['train_time_s']:.1f} s" if r != n
                 else f"; the run had already trained its {r} steps")
    return line


class MetricsHistory(NamedTuple):
    train: list[dict]    # training rows with a finite loss
    evals: list[dict]    # evaluation rows with a finite validation loss
    not_finite: list[int]  # steps whose loss or gradient norm was not finite (skipped, or where a run stopped)


def read_metrics(run_dir) -> MetricsHistory:
    """The rows of a run's metrics.jsonl; lines that are not rows are left out with a
    note on stderr naming them."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {run_dir} a run folder?")
    rows, bad = metrics_rows(path)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        print(f"scratchformer: note: {path}: left out {len(bad)} line(s) that are not metric rows (line {shown})",
              file=sys.stderr)
    m = MetricsHistory([], [], [])
    for row in rows:  # null: not finite
        if "loss" in row and row["loss"] is not None and row.get("grad_norm") is not None:
            m.train.append(row)
        elif "loss" in row:
            m.not_finite.append(row["step"])
        elif row.get("val_loss") is not None:
            m.evals.append(row)
    return m


def read_run(run_dir) -> dict:
    """What a comparison needs of a run folder: name, config, metrics, summary if done."""
    d = Path(run_dir)
    path = d / "config.json"
    if not d.is_dir():
        raise CheckpointError(f"run folder {d} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {run_dir} a run folder?")
    cfg = from_file(path)
    if not (d / "metrics.jsonl").is_file():
        weights = ckpt.best(d)
        imported = weights is not None and ckpt.read_meta(weights).get("imported_from")
        raise CheckpointError(f"{d} has no metrics.jsonl: " + ("weights only (an imported model), no training to "
                              "compare" if imported else "no training steps logged yet"))
    train, evals, _ = read_metrics(d)
    summary = {}
    if (d / "summary.json").is_file():
        try:
            summary = json.loads((d / "summary.json").read_text())
        except ValueError as e:
            raise CheckpointError(f"{d / 'summary.json'} is not JSON ({e}); delete it to compare the run without it") \
                from None
        if not isinstance(summary, dict):
            raise CheckpointError(f"{d / 'summary.json'} holds {type(summary).__name__}, not a JSON object")
    return {"dir": d, "name": d.resolve().name, "cfg": cfg, "train": train, "evals": evals, "summary": summary}
