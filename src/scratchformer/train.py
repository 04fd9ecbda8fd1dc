"""Training: the TrainState pytree, the jitted step, and the loop around it.

`train_step(state, batch) -> (state, metrics)` is the one training path. The loop
calls it through `make_train_call`, which draws each batch on device from the step
number and runs `steps_per_call` steps in a `lax.scan` per jitted call (with the
state donated) - a speed option that gives the same numbers as one step per call.

Randomness is a pure function of (seed, step): the batch of step s uses
fold_in(fold_in(rng, s), 0), its dropout fold_in(fold_in(rng, s), 1). A resumed run
therefore draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from .config import RunConfig, task_class
from .kernels import product_dtype
from .memory import check_fits, program_bytes, tree_bytes
from .optim import clip_by_global_norm, ema_decay, ema_update
from .optimizers import optimizer, schedule
from .parallel import (batch_sharding, bytes_per_device, check_batch, host_value, is_main, make_mesh, put_global,
                       replicated, state_shardings)
from .progress import training_bar
from .runs import RunFolder
from .stop import StopRequest
from .train_run import Checkpoints, Metrics, TrainingDiverged, TrainingInterrupted, footprint, header, start_state

__all__ = ["TrainState", "TrainingDiverged", "TrainingInterrupted", "fit", "dry_run", "weights"]


class TrainState(NamedTuple):
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any         # the state of optim.name's optimizer (optim.AdamWState, muon.HybridState)
    rng: jax.Array         # uint32[2] PRNG key of the run
    ema: Any = None        # train.ema > 0: the moving average of params (what is evaluated and saved
                           # as the model); None: off


def weights(state: TrainState):
    """The weights a run evaluates, samples and exports: the moving average when there is one."""
    return state.params if state.ema is None else state.ema


def init_state(cfg: RunConfig) -> TrainState:
    k_init, k_run = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    params = task_class(cfg.task).init_params(k_init, cfg.model)
    ema = jax.tree.map(jnp.copy, params) if cfg.train.ema else None
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer(cfg.optim, params).init(params), k_run, ema)


def run_key(cfg: RunConfig):
    """The run's PRNG key (TrainState.rng), without building the state."""
    return jax.random.split(jax.random.PRNGKey(cfg.train.seed))[1]


def init_sharded_state(cfg: RunConfig, shardings) -> TrainState:
    """init_state created directly in its shardings (committed, as the train call returns it,
    so the first and later calls share one compiled executable)."""
    return jax.jit(lambda: init_state(cfg), out_shardings=shardings)()


def state_template(cfg: RunConfig):
    """Shapes and dtypes of the TrainState, without allocating it."""
    return jax.eval_shape(lambda: init_state(cfg))


def lr_at(cfg: RunConfig, step):
    """optim.lr's rate at `step` under optim.schedule (Muon's rate keeps its ratio to it)."""
    return schedule(cfg.optim, cfg.train.steps)(step)


def make_train_step(cfg: RunConfig, micro_sharding=None):
    """The pure training step for this config: train_step(state, batch) -> (state, metrics)."""
    o, t = cfg.optim, cfg.train
    loss_fn = partial(task_class(cfg.task).loss, cfg=cfg.model, train=True, label_smoothing=t.label_smoothing)
    grad_fn = jax.value_and_grad(lambda p, b, k: loss_fn(p, b, key=k), has_aux=True)
    opt = optimizer(o, state_template(cfg).params, product_dtype(cfg.model.products))

    def summed_grads(params, batch, key):
        """(sum of token losses, sum of weights, gradient of the sum) over the batch,
        accumulated over grad_accum micro-batches of consecutive rows."""
        if t.grad_accum == 1:
            (s, w), g = grad_fn(params, batch, key)
            return s, w, g
        micro = jax.tree.map(lambda x: x.reshape(t.grad_accum, -1, *x.shape[1:]), batch)

        def body(carry, inp):
            i, mb = inp
            if micro_sharding is not None:
                mb = jax.lax.with_sharding_constraint(mb, micro_sharding)
            (s, w), g = grad_fn(params, mb, jax.random.fold_in(key, i))
            return (carry[0] + s, carry[1] + w, jax.tree.map(jnp.add, carry[2], g)), None

        zero = jnp.zeros((), jnp.float32)
        init = (zero, zero, jax.tree.map(jnp.zeros_like, params))
        (s, w, g), _ = jax.lax.scan(body, init, (jnp.arange(t.grad_accum), micro))
        return s, w, g

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        s, w, g = summed_grads(state.params, batch, key)
        w = jnp.maximum(w, 1.0)
        loss = s / w
        grads, norm = clip_by_global_norm(jax.tree.map(lambda x: x / w, g), o.clip_norm)
        lr = lr_at(cfg, state.step)
        params, opt_state = opt.update(grads, state.opt_state, state.params, lr)
        ema = None if state.ema is None else ema_update(state.ema, params, ema_decay(t.ema, state.step))
        if t.skip_nonfinite:
            ok = jnp.isfinite(loss) & jnp.isfinite(norm)
            params, opt_state, ema = jax.tree.map(lambda new, old: jnp.where(ok, new, old), (params, opt_state, ema),
                                                  (state.params, state.opt_state, state.ema))
        return (TrainState(state.step + 1, params, opt_state, state.rng, ema),
                {"loss": loss, "grad_norm": norm, "lr": lr})

    return train_step


def make_train_call(cfg: RunConfig, task, n_steps: int, mesh=None, *, fsdp: bool = False):
    """Jitted call running `n_steps` training steps, drawing each batch on device.
    Returns (fn, state_shardings); fn(state, data) -> (state, metrics of n_steps)."""
    mesh = mesh or make_mesh()
    check_batch(cfg.train.batch_size, cfg.train.grad_accum, mesh)
    bs = batch_sharding(mesh)
    step_fn = make_train_step(cfg, micro_sharding=bs if cfg.train.grad_accum > 1 else None)

    steps_bs = NamedSharding(mesh, P(None, *bs.spec))  # n_steps x batch x ..., batch split

    def call(state, data):
        batches = task.batches(data, state.rng, state.step, n_steps, cfg.train.batch_size)
        batches = jax.lax.with_sharding_constraint(batches, steps_bs)

        def body(st, batch):
            return step_fn(st, jax.lax.with_sharding_constraint(batch, bs))
        return jax.lax.scan(body, state, batches)

    shardings = state_shardings(state_template(cfg), mesh, fsdp=fsdp)
    # The data keeps the sharding it comes with (replicated device data, or streamed
    # windows split along the batch).
    fn = jax.jit(call, donate_argnums=0, in_shardings=(shardings, None), out_shardings=(shardings, replicated(mesh)))
    return fn, shardings


def steps_per_call(cfg: RunConfig) -> int:
    """Largest k <= train.steps_per_call that divides every boundary where the loop must
    stop (evaluation, checkpoint, end), so one compiled call serves the whole run."""
    t = cfg.train
    g = math.gcd(math.gcd(t.eval_every, t.checkpoint_every), t.steps)
    return max(d for d in range(1, min(t.steps_per_call, g) + 1) if g % d == 0)


class Plan(NamedTuple):
    call: Any        # the compiled training call: (state, data) -> (state, metrics)
    shardings: Any   # of the TrainState
    data: dict       # the task's input_spec: its device data, or the shape of a streamed call's
    mesh: Any
    k: int           # steps per call
    n_params: int


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
    n = sum(x.size for x in jax.tree.leaves(template.params))
    check_fits(call, mesh.local_devices, what=footprint(cfg, n, fsdp, mesh.size), advice=_advice(fsdp, mesh.size),
               allocated=_allocated(data))
    return Plan(call, shardings, data, mesh, k, n)


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
    Returns {"parameters", "bytes_per_device", "header"}."""
    p = plan(task, fsdp=fsdp)
    return {"parameters": p.n_params, "bytes_per_device": program_bytes(p.call),
            "header": header(task, p.n_params, program_bytes(p.call), out_dir)}


def fit(task, out_dir, *, resume: bool = False, fsdp: bool = False, progress: bool = True) -> dict:
    """Train `task` under its config (`task.cfg`), writing the run to `out_dir`; returns
    the summary (also written to summary.json). `task.source` (the data file) is saved
    with each checkpoint and checked on resume."""
    t, main = task.cfg.train, is_main()
    p = plan(task, fsdp=fsdp)
    task.mesh = p.mesh
    run = RunFolder(out_dir)
    state, best_val = start_state(run, task, p.shardings, resume=resume, main=main)
    if main:  # once the run is set to start (an error above is the only line)
        print(header(task, p.n_params, program_bytes(p.call), out_dir), file=sys.stderr)
    start = step = int(host_value(state.step))
    bar = training_bar(t.steps, start, enabled=progress and main, per_call=p.k)
    metrics = Metrics(run if main else None, task, bar)
    saves = Checkpoints(run, task, main, best_val)
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
                saves.evaluated(state, step, metrics.evaluation(weights(state), step, time.perf_counter() - t_start))
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
    final = task.evaluate(weights(state), full=True)
    if state.ema is not None:  # what the average gained, measured in every run that keeps one
        final["val_loss_without_ema"] = task.evaluate(state.params, full=True)["val_loss"]
    summary = {"task": cfg.task, "steps": cfg.train.steps, "resumed_from": start,
               "train_time_s": round(train_time, 2), **final,
               "best_periodic_val_loss": best_val if math.isfinite(best_val) else None,
               "devices": p.mesh.size, "processes": jax.process_count(), "fsdp": fsdp,
               "state_bytes_total": tree_bytes(state),
               "state_bytes_per_device_max": max(bytes_per_device(state).values())}
    if is_main():
        run.write_json("summary.json", summary)
    return summary


def restore_state(tensors, cfg: RunConfig, shardings, source: str):
    """A checkpoint's tensors as the TrainState, placed in its shardings (any device
    count: the file holds whole arrays)."""
    from . import checkpoint as ckpt
    host_state = ckpt.restore(tensors, state_template(cfg), source=source)
    return put_global(host_state, shardings)
