"""Training's state and step: the TrainState pytree and the jitted step (the loop
around them is loop.py).

`train_step(state, batch) -> (state, metrics)` is the one training path. The loop
calls it through `make_train_call`, which draws each batch on device from the step
number and runs `steps_per_call` steps in a `lax.scan` per jitted call (with the
state donated) - a speed option that gives the same numbers as one step per call.

Randomness is a pure function of (seed, step): the batch of step s uses
fold_in(fold_in(rng, s), 0), its dropout fold_in(fold_in(rng, s), 1). A resumed run
therefore draws exactly what an uninterrupted one would.

A LoRA run (lora.rank > 0; lora.py) trains adapters: `params` are the adapters (all
that the optimizer and the moving average see), and `base` holds the frozen weights
they adapt, passed through every step unchanged and never differentiated. A
checkpoint holds the state less the base (`checkpointed`), which is read again from
the run it came from (runs.base_weights).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from . import checkpoint as ckpt
from . import lora
from .config import RunConfig
from .kernels import product_dtype
from .optim import optimizer, schedule
from .optim.adamw import clip_by_global_norm
from .optim.ema import ema_decay, ema_update
from .parallel import batch_sharding, check_batch, make_mesh, put_global, replicated, state_shardings
from .tasks import task_class


class TrainState(NamedTuple):
    step: jax.Array        # int32 scalar: optimizer steps taken
    params: Any            # what trains: the model's weights, or a LoRA run's adapters
    opt_state: Any         # the state of optim.name's optimizer (optim.adamw.AdamWState, optim.muon.HybridState)
    rng: jax.Array         # uint32[2] PRNG key of the run
    ema: Any = None        # train.ema > 0: the moving average of params (what is evaluated and saved
                           # as the model); None: off
    base: Any = None       # a LoRA run's frozen weights, which `params` adapt; None: not a LoRA run


def weights(state: TrainState, cfg: RunConfig, *, average: bool = True):
    """The model's weights a run evaluates, samples and exports: the moving average when
    there is one (unless average=False), merged into the frozen base in a LoRA run."""
    w = state.params if state.ema is None or not average else state.ema
    return w if state.base is None else lora.merge(state.base, w, cfg.lora)


def checkpointed(state: TrainState) -> TrainState:
    """What a checkpoint holds: the state, less a LoRA run's frozen base."""
    return state._replace(base=None)


def init_state(cfg: RunConfig) -> TrainState:
    """The state at step 0; a LoRA run's base is a fresh model here, which the weights
    of train.init_from replace (loop.start_state), as a fine-tune's params are."""
    k_init, k_run = jax.random.split(jax.random.PRNGKey(cfg.train.seed))
    params, base = task_class(cfg.task).init_params(k_init, cfg.model), None
    if cfg.lora.rank:
        base, params = params, lora.init_adapters(jax.random.fold_in(k_init, 1), params, cfg.lora)
    ema = jax.tree.map(jnp.copy, params) if cfg.train.ema else None
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer(cfg.optim, params).init(params), k_run, ema, base)


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
    opt = optimizer(o, state_template(cfg).params, product_dtype(cfg.model.products))

    def loss_of(params, base, batch, key):
        """The loss as a function of what trains: the model's weights, or a LoRA run's
        adapters beside the frozen base (whose gradient is then never formed)."""
        if base is not None:  # lora.dropout's masks: a stream of the step's key of their own
            params = lora.beside(base, params, cfg.lora, jax.random.fold_in(key, 2))
        return loss_fn(params, batch, key=key)
    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def summed_grads(params, base, batch, key):
        """(sum of token losses, sum of weights, gradient of the sum) over the batch,
        accumulated over grad_accum micro-batches of consecutive rows."""
        if t.grad_accum == 1:
            (s, w), g = grad_fn(params, base, batch, key)
            return s, w, g
        micro = jax.tree.map(lambda x: x.reshape(t.grad_accum, -1, *x.shape[1:]), batch)

        def body(carry, inp):
            i, mb = inp
            if micro_sharding is not None:
                mb = jax.lax.with_sharding_constraint(mb, micro_sharding)
            (s, w), g = grad_fn(params, base, mb, jax.random.fold_in(key, i))
            return (carry[0] + s, carry[1] + w, jax.tree.map(jnp.add, carry[2], g)), None

        zero = jnp.zeros((), jnp.float32)
        init = (zero, zero, jax.tree.map(jnp.zeros_like, params))
        (s, w, g), _ = jax.lax.scan(body, init, (jnp.arange(t.grad_accum), micro))
        return s, w, g

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)
        s, w, g = summed_grads(state.params, state.base, batch, key)
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
        return (TrainState(state.step + 1, params, opt_state, state.rng, ema, state.base),
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


def restore_state(tensors, cfg: RunConfig, shardings, source: str, base=None):
    """A checkpoint's tensors as the TrainState, placed in its shardings (any device
    count: the file holds whole arrays); `base`: a LoRA run's frozen weights, which
    its checkpoints leave out."""
    host_state = ckpt.restore(tensors, checkpointed(state_template(cfg)), source=source)
    return put_global(host_state._replace(base=base), shardings)
