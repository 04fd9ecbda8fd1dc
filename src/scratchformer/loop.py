"""The training loop: `fit` compiles the step, starts or resumes the run, and calls the
step until train.steps, evaluating, checkpointing and reporting progress on the way;
`dry_run` stops after the compilation and the memory check.

A run starts from the latest checkpoint when resuming, else from the initial state,
a function of the seed alone, so a resumed run that was killed before its first
checkpoint starting over is exact.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, NamedTuple

import jax

from . import checkpoint as ckpt
from .errors import CheckpointError, DataError, ResumeMismatch
from .finetune import start_params
from .memory import check_fits, program_bytes, tree_bytes
from .parallel import bytes_per_device, host_value, is_main, make_mesh, put_global
from .progress import training_bar
from .records import Checkpoints, MetricsLog, footprint, header
from .runs import RunFolder, config_of, lora_base, not_a_folder
from .stop import StopRequest, TrainingInterrupted
from .train import init_sharded_state, make_train_call, restore_state, run_key, state_template, steps_per_call, weights


class Plan(NamedTuple):
    call: Any        # the compiled training call: (state, data) -> (state, metrics)
    shardings: Any   # of the TrainState
    data: dict       # the task's input_spec: its device data, or the shape of a streamed call's
    mesh: Any
    k: int           # steps per call
    n_params: int    # of the model
    n_trained: int   # of what trains: the model's, or a LoRA run's adapters'
    n_mtp: int       # of the model's, in its multi-token prediction modules (training's alone)


def plan(task, *, fsdp: bool = False) -> Plan:
    """Compile the training call and check that it fits in memory, before the state is
    allocated or the run folder made (a run too big for the machine is an error first)."""
    cfg = task.cfg
    mesh = make_mesh()
    k = steps_per_call(cfg)
    call, shardings = make_train_call(cfg, task, k, mesh, fsdp=fsdp)
    data = task.input_spec(mesh, k)
    template = state_template(cfg)
    call = call.lower(template, data).compile()
    model = template.params if template.base is None else template.base
    n, trained = (sum(x.size for x in jax.tree.leaves(t)) for t in (model, template.params))
    check_fits(call, mesh.local_devices, what=footprint(cfg, n, fsdp, mesh.size), advice=_advice(fsdp, mesh.size),
               allocated=_allocated(data))
    n_mtp = sum(x.size for x in jax.tree.leaves(model.get("mtp", {})))
    return Plan(call, shardings, data, mesh, k, n, trained, n_mtp)


def _allocated(data) -> int:
    """Bytes per device of the call's data that exist already (device data, replicated);
    streamed windows are made call by call."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(data) if isinstance(x, jax.Array))


def _advice(fsdp: bool, n_devices: int) -> str:
    more = "; fsdp splits the parameters and optimizer state over the devices" if n_devices > 1 and not fsdp else ""
    return ("choose a smaller model or train.batch_size (train.grad_accum keeps the tokens per step with a smaller "
            f"batch){more}")


def dry_run(task, out_dir, *, fsdp: bool = False) -> dict:
    """Compile the step and check that it fits in memory; allocate no training state and
    write nothing (the data is on the devices already: the check counts it).
    Returns {"parameters", "bytes_per_device", "report"}: the report says so in two lines."""
    p = plan(task, fsdp=fsdp)
    need = program_bytes(p.call)
    fits = "fits in memory" if need else "has no memory figure from XLA on this backend, so its fit was not checked"
    return {"parameters": p.n_params, "trained": p.n_trained, "bytes_per_device": need,
            "report": f"{header(task, p, need, out_dir)}\ndry run: the training step compiled and {fits}; nothing was "
                      "trained or written"}


def fit(task, out_dir, *, resume: bool = False, fsdp: bool = False, progress: bool = True) -> dict:
    """Train `task` under its config (`task.cfg`), writing the run to `out_dir`; returns
    the summary (also written to summary.json). `task.source` (the data file) is saved
    with each checkpoint and checked on resume."""
    t, main = task.cfg.train, is_main()
    p = plan(task, fsdp=fsdp)
    task.mesh = p.mesh
    run = RunFolder(out_dir)
    state, best_val, base = start_state(run, task, p.shardings, resume=resume, main=main)
    if main:  # once the run is set to start (an error above is the only line)
        print(header(task, p, program_bytes(p.call), out_dir), file=sys.stderr)
    start = step = int(host_value(state.step))
    bar = training_bar(t.steps, start, enabled=progress and main, per_call=p.k)
    metrics = MetricsLog(run if main else None, task, bar)
    saves = Checkpoints(run, task, main, best_val, base)
    feed = task.feed(p.data, run_key(task.cfg), start, p.k)
    stop = StopRequest(enabled=jax.process_count() == 1).install()
    t_start = time.perf_counter()
    try:
        while step < t.steps:
            state, out = p.call(state, next(feed))
            metrics.dispatched(step, out)  # reads the previous call's metrics, not this one's
            step += p.k
            bar.update(p.k)
            at_eval = step % t.eval_every == 0 or step == t.steps  # the last state is always evaluated
            at_ckpt = step % t.checkpoint_every == 0 or step == t.steps
            if at_eval or at_ckpt or stop.signum is not None:
                metrics.flush()
            if at_eval:
                val = metrics.evaluation(weights(state, task.cfg), step, time.perf_counter() - t_start)
                saves.evaluated(state, step, val)
            if at_ckpt or stop.signum is not None:
                saves.save(state, step)
            if stop.signum is not None:
                raise TrainingInterrupted(stop.signum, step, saves.path(step), run.path)
    finally:
        feed.close()
        stop.restore()
        bar.close()
    return _summary(task, state, run, p, start=start if resume else None, best_val=saves.best_val,
                    train_time=time.perf_counter() - t_start, fsdp=fsdp)


def _summary(task, state, run, p: Plan, *, start, best_val, train_time, fsdp) -> dict:
    """The final evaluation on the whole held-out set, and what the run took."""
    cfg = task.cfg
    final = task.evaluate(weights(state, cfg), full=True)
    if state.ema is not None:  # what the average gained, measured in every run that keeps one
        final["val_loss_without_ema"] = task.evaluate(weights(state, cfg, average=False), full=True)["val_loss"]
    summary = {"task": cfg.task, "steps": cfg.train.steps, "resumed_from": start,
               "train_time_s": round(train_time, 2), **final,
               "best_periodic_val_loss": best_val if math.isfinite(best_val) else None,
               "devices": p.mesh.size, "processes": jax.process_count(), "fsdp": fsdp,
               "state_bytes_total": tree_bytes(state),
               "state_bytes_per_device_max": max(bytes_per_device(state).values())}
    if is_main():
        run.write_json("summary.json", summary)
    return summary


def start_state(run: RunFolder, task, shardings, *, resume: bool, main: bool):
    """(state, best validation loss so far, base): the latest checkpoint's when resuming,
    else the initial state (a function of the seed, so a resumed run that was killed
    before its first checkpoint starting over is exact). Checks that a resumed run keeps
    its config and data; writes config.json for a fresh run. base: the identity of a
    LoRA run's frozen weights (runs.base_weights), which its checkpoints record; None
    for other runs."""
    cfg = task.cfg
    if resume and ckpt.latest(run.path) is None and not (run.path / "config.json").is_file():
        # before run.prepare, which would make the folder it names
        what = not_a_folder(run.path) or "has no checkpoint to resume from"
        raise CheckpointError(f"cannot resume: {run.path} {what}")
    if main:
        run.prepare(resume=resume)
    path = ckpt.latest(run.path) if resume else None
    if path is None:
        if main:
            run.truncate_metrics(0)
            run.write_json("config.json", cfg.to_dict())
            for name, text in task.run_files().items():  # the tokenizer, for tools of one's own
                run.write_text(name, text)
        state = init_sharded_state(cfg, shardings)
        if not cfg.train.init_from:
            return state, math.inf, None
        start, base = start_params(cfg)  # a fine-tune: the source run's weights, a fresh optimizer
        if cfg.lora.rank:  # LoRA: frozen, beside fresh adapters
            return state._replace(base=put_global(start, shardings.base)), math.inf, base
        return state._replace(params=put_global(start, shardings.params),
                              ema=None if state.ema is None else put_global(start, shardings.ema)), math.inf, None
    tensors, meta = ckpt.read(path)
    _check_same_data(meta.get("data") or {}, task.source or {})  # first: other data changes the vocabulary too
    saved = config_of(meta, path)
    if saved != cfg:
        raise ResumeMismatch(f"cannot resume: {path} was saved with a different config "
                             f"({_config_difference(saved.to_dict(), cfg.to_dict())}); a resumed run keeps its config")
    frozen, base = lora_base(cfg, meta, path) if cfg.lora.rank else (None, None)
    state = restore_state(tensors, cfg, shardings, str(path), frozen)
    if main:
        run.truncate_metrics(int(meta.get("step", host_value(state.step))))
    return state, meta.get("best_val_loss") or math.inf, base


def _check_same_data(saved: dict, source: dict) -> None:
    if source and saved.get("sha256") and saved["sha256"] != source.get("sha256"):
        raise DataError(f"{source.get('path')}: cannot resume on it, the run was trained on {saved.get('path')} "
                        "(sha256 differs)", option="data")


def _config_difference(saved: dict, now: dict) -> str:
    """The first keys where two config dicts differ, as 'key: saved -> now'."""
    a, b = ckpt.flatten(saved), ckpt.flatten(now)
    diff = [f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]
    return ", ".join(diff[:3]) + (f" and {len(diff) - 3} more" if len(diff) > 3 else "")
