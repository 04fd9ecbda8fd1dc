"""What a training run records as it goes: its metrics rows and progress lines
(`MetricsLog`, which also stops a run whose loss is not finite), its checkpoints and
the best one (`Checkpoints`), and the line it starts with (`header`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from .kernels import product_dtype
from .memory import format_bytes
from .parallel import host_value
from .runs import RunFolder
from .train import checkpointed


class TrainingDiverged(RuntimeError):
    """Loss or gradient norm became NaN/inf."""


def _json_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class MetricsLog:
    """Training metrics, a jitted call's worth at a time: rows in metrics.jsonl (run is
    None on processes other than 0), the progress report, and a stop on a step whose
    loss or gradient is not finite (unless train.skip_nonfinite)."""

    def __init__(self, run: RunFolder | None, task, bar):
        self.run, self.task, self.bar = run, task, bar
        self.pending = None       # (first step, metrics) of the call in flight
        self.rate_from = None     # (time, step) after the first call: a rate of steady calls

    def dispatched(self, first_step: int, metrics) -> None:
        """A call was dispatched: write the previous call's rows while it runs."""
        self.flush()
        self.pending = (first_step, metrics)
        if self.rate_from is None:
            host_value(metrics["loss"])  # the first call waits for its warm-up
            self.rate_from = (time.perf_counter(), first_step + len(metrics["loss"]))

    def flush(self) -> None:
        if self.pending is not None:
            first, metrics = self.pending
            self.pending = None
            self._write(first, {k: host_value(v) for k, v in metrics.items()})

    def _write(self, first_step: int, m: dict) -> None:
        skip = self.task.cfg.train.skip_nonfinite
        rows = []
        for i in range(len(m["loss"])):
            bad = not (np.isfinite(m["loss"][i]) and np.isfinite(m["grad_norm"][i]))
            rows.append({"step": first_step + i + 1, "loss": _json_float(m["loss"][i]),
                         "grad_norm": _json_float(m["grad_norm"][i]), "lr": float(m["lr"][i]),
                         **({"skipped": True} if bad and skip else {})})
            if bad and not skip:
                self._append(rows)
                last = ckpt.latest(self.run.path) if self.run else None
                raise TrainingDiverged(
                    f"loss or gradient norm is not finite at step {rows[-1]['step']} (loss={m['loss'][i]}, "
                    f"grad_norm={m['grad_norm'][i]}); stopped. Last good checkpoint: "
                    f"{last if last else 'none'} (train.skip_nonfinite=true skips such steps)")
        self._append(rows)
        self.bar.report(rows[-1]["step"], f"loss={m['loss'][-1]:.4f}, lr={m['lr'][-1]:.2e}{self._rate(rows)}")

    def _append(self, rows: list[dict]) -> None:
        if self.run:
            self.run.append(rows)

    def _rate(self, rows) -> str:
        t0, step0 = self.rate_from
        done = rows[-1]["step"] - step0
        if done <= 0:
            return ""
        per_s = done * self.task.tokens_per_step(self.task.cfg) / (time.perf_counter() - t0)
        return f", {self.task.unit}/s={per_s:,.0f}"

    def evaluation(self, params, step: int, elapsed: float) -> float:
        """The periodic validation loss, in metrics.jsonl and as a line that stays."""
        val = self.task.evaluate(params, full=False)["val_loss"]
        if self.run:
            self.run.append([{"step": step, "val_loss": val}])
            self.bar.write(f"step {step}: val_loss {val:.4f} ({elapsed:.1f} s)")
        return val


class Checkpoints:
    """The run's checkpoints: the latest train.keep_checkpoints steps, and the best
    periodic validation loss's state (what eval and sample open). Every process takes
    part in a save (gathering sharded arrays); process 0 writes. A LoRA run's hold its
    adapters, not the frozen weights, whose identity `base` (runs.base_weights) each
    records."""

    def __init__(self, run: RunFolder, task, main: bool, best_val: float, base: dict | None = None):
        self.run, self.task, self.main, self.best_val, self.base = run, task, main, best_val, base

    def path(self, step: int) -> Path:
        return ckpt.step_path(self.run.path, step)

    def evaluated(self, state, step: int, val_loss: float) -> None:
        if val_loss < self.best_val:
            self.best_val = val_loss
            self._write(state, step, self.run.path / ckpt.CKPT_DIR / ckpt.BEST)

    def save(self, state, step: int) -> None:
        self._write(state, step, self.path(step))
        if self.main:
            ckpt.prune(self.run.path, self.task.cfg.train.keep_checkpoints)

    def _write(self, state, step: int, path: Path) -> None:
        meta = {"config": self.task.cfg.to_dict(), "task_meta": self.task.meta(), "data": self.task.source or {},
                "step": step, "best_val_loss": _json_float(self.best_val), **({"base": self.base} if self.base else {})}
        if self.main:
            ckpt.save(path, checkpointed(state), meta)
        else:
            ckpt.to_host(checkpointed(state))


def footprint(cfg, n: int, fsdp: bool, n_devices: int) -> str:
    m, t = cfg.model, cfg.train
    spread = f", fsdp over {n_devices} devices" if fsdp else ""
    return (f"training this model (model.n_layer={m.n_layer}, model.d_model={m.d_model}, model.d_ff={m.d_ff}, "
            f"model.block_size={m.block_size}: {n:,} parameters) at train.batch_size={t.batch_size}{spread}")


def precision(m) -> str:
    """The model's dtype, and its products' where model.products rounds them."""
    products = product_dtype(m.products)
    return f"{m.dtype} with {products.name} products" if products is not None and m.dtype == "float32" else m.dtype


def header(task, plan, need: int | None, out_dir) -> str:
    """One line before training starts: what is trained, how long, in how much memory
    (`plan`: the loop's Plan, for the model's size and what trains of it)."""
    cfg = task.cfg
    m, t, lo = cfg.model, cfg.train, cfg.lora
    shape = "+".join([str(m.n_layer)] * task.stacks) + " layers"
    per_step = f"{task.tokens_per_step(cfg):,} {'tokens' if task.unit == 'tok' else 'sequences'}"
    memory = f"; needs ~{format_bytes(need)} per device" if need else ""
    heads = f"{m.n_head} heads" + (f" over {m.kv_heads} key/value heads" if m.kv_heads != m.n_head else "")
    adapters = (f", frozen; LoRA trains {plan.n_trained:,} in rank-{lo.rank} adapters on "
                f"{', '.join(lo.target_names)}" if lo.rank else "")
    modules = ("a multi-token prediction module" if m.mtp_depth == 1 else
               f"{m.mtp_depth} multi-token prediction modules")
    mtp = f", {plan.n_mtp:,} of them in {modules} that only training uses" if plan.n_mtp else ""
    return (f"{cfg.task}: {plan.n_params:,} parameters ({shape} x {m.d_model}, {heads}, context "
            f"{m.block_size}, {precision(m)}){mtp}{adapters}; {t.steps:,} steps of {per_step}{memory}; "
            f"run folder {out_dir}")
