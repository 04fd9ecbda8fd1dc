"""The optimizers and learning-rate schedules, hand-written, and the registry that builds
the ones a config names (optim.name, optim.schedule): `optimizer` and `schedule` are the
one place a name is looked up; config.OPTIMIZERS and config.SCHEDULES list the names.

  adamw.py      AdamW, global-norm clipping, the weight-decay mask
  muon.py       Muon on the hidden matrices, and the hybrid with AdamW on the rest
  schedules.py  warmup + cosine, warmup-stable-decay
  ema.py        the moving average of the weights

An `Optimizer` is the pair the training step uses, closed over the config and the
masks of the parameter tree (Python bools, static under jit):
init(params) -> state, and update(grads, state, params, lr) -> (params, state), where
lr is the scheduled rate of optim.lr. Any other rate (Muon's optim.muon_lr) keeps its
ratio to optim.lr, so every rate follows the one schedule's shape.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

from ..config import OptimConfig
from .adamw import adamw_init, adamw_update, decay_mask
from .muon import hybrid_init, hybrid_update, muon_mask
from .schedules import warmup_cosine, warmup_stable_decay


class Optimizer(NamedTuple):
    init: Callable[[Any], Any]   # params -> optimizer state
    update: Callable[..., Any]   # (grads, state, params, lr) -> (new params, new state)


def adamw(o: OptimConfig, params, products=None) -> Optimizer:
    """adamw.adamw_update on every leaf, decayed where adamw.decay_mask says."""
    decay = decay_mask(params, decay_embeddings=o.decay_embeddings)

    def update(grads, state, params, lr):
        return adamw_update(grads, state, params, lr=lr, b1=o.b1, b2=o.b2, eps=o.eps,
                            weight_decay=o.weight_decay, mask=decay)
    return Optimizer(adamw_init, update)


def muon_adamw(o: OptimConfig, params, products=None) -> Optimizer:
    """muon.hybrid_update: Muon (optim.muon_lr, muon_momentum, muon_weight_decay,
    muon_coeffs, and NorMuon where normuon_beta2 > 0; the reference's Nesterov, 5
    Newton-Schulz steps and shape factor) on the hidden matrices (muon.muon_mask), AdamW
    (optim.lr, b1, b2, eps, weight_decay) on every other leaf.
    The state is a muon.HybridState, holding None at the other optimizer's leaves.
    products: the dtype of the Newton-Schulz products' inputs (model.products), or None."""
    on_muon = muon_mask(params)
    decay = decay_mask(params, decay_embeddings=o.decay_embeddings)
    ratio = o.muon_lr / o.lr

    def update(grads, state, params, lr):
        return hybrid_update(grads, state, params, muon_lr=lr * ratio, adam_lr=lr, muon_mask=on_muon,
                             decay_mask=decay, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             muon_weight_decay=o.muon_weight_decay, momentum=o.muon_momentum, products=products,
                             ns_coeffs=o.muon_coeffs, normuon_beta2=o.normuon_beta2)
    return Optimizer(lambda p: hybrid_init(p, on_muon, normuon=o.normuon_beta2 > 0), update)


_BUILD_OPTIMIZER = {"adamw": adamw, "muon": muon_adamw}  # keys: config.OPTIMIZERS


def cosine(o: OptimConfig, total_steps: int):
    return partial(warmup_cosine, peak=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps, total_steps=total_steps)


def wsd(o: OptimConfig, total_steps: int):
    """The decay takes decay_fraction of total_steps, rounded, at least 1 step."""
    return partial(warmup_stable_decay, peak=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
                   total_steps=total_steps, decay_steps=max(1, round(o.decay_fraction * total_steps)))


_BUILD_SCHEDULE = {"cosine": cosine, "wsd": wsd}  # keys: config.SCHEDULES


def optimizer(o: OptimConfig, params, products=None) -> Optimizer:
    """The optimizer optim.name names, for a tree shaped like `params` (arrays or
    ShapeDtypeStructs); products: the model's product dtype (kernels.product_dtype),
    which Muon's Newton-Schulz iteration follows."""
    return _BUILD_OPTIMIZER[o.name](o, params, products)


def schedule(o: OptimConfig, total_steps: int):
    """The schedule optim.schedule names: step -> optim.lr's rate at that step (traceable)."""
    return _BUILD_SCHEDULE[o.schedule](o, total_steps)
