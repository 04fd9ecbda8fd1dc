"""Hand-written AdamW, global-norm clipping and the weight-decay mask.

The optimizer is a pair of pure functions over a small NamedTuple state, as in
optax's `scale_by_adam`: `adamw_init(params)` and
`adamw_update(grads, state, params, ...) -> (new_params, new_state)`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..kernels import sum_of_squares  # textbook or CPU fast path: kernels.FAST decides
from ..layers import at_least_f32


class AdamWState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    mu: Any           # first moment, same tree as params
    nu: Any           # second moment, same tree as params


def adamw_init(params) -> AdamWState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamWState(jnp.zeros((), jnp.int32), zeros, jax.tree.map(jnp.zeros_like, params))


def global_norm(tree):
    """sqrt of the sum of squares of every leaf, in (at least) float32."""
    return jnp.sqrt(sum(sum_of_squares(at_least_f32(x)) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(grads, max_norm: float):
    """Scale all gradients by min(1, max_norm / ||g||) (Pascanu et al. 2013).
    Returns (clipped, norm before clipping). max_norm == 0 disables clipping."""
    norm = global_norm(grads)
    if not max_norm:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return jax.tree.map(lambda g: g * scale, grads), norm


def decay_mask(params, *, decay_embeddings: bool = True):
    """True for leaves that get weight decay: every matrix (ndim >= 2), that is linear
    weights and — unless decay_embeddings is False — the token/position embedding
    tables (nanoGPT decays them too). Biases and LayerNorm gains/biases never decay."""
    def rule(path, leaf):
        in_embed = any(getattr(k, "key", None) == "embed" for k in path)
        return leaf.ndim >= 2 and (decay_embeddings or not in_embed)
    return jax.tree_util.tree_map_with_path(rule, params)


def adamw_update(grads, state: AdamWState, params, *, lr, b1: float, b2: float, eps: float,
                 weight_decay: float, mask=None):
    """One AdamW step (Loshchilov & Hutter 2019), in the torch / optax convention:

        m <- b1 m + (1-b1) g;    v <- b2 v + (1-b2) g^2
        m^ = m / (1 - b1^t);     v^ = v / (1 - b2^t)      (bias correction, Kingma & Ba 2015, Alg. 1)
        p <- p - lr * (m^ / (sqrt(v^) + eps) + weight_decay * p)   [decay only where mask]

    The decay is decoupled from the gradient and multiplied by the learning rate.
    """
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
    if mask is None:
        mask = jax.tree.map(lambda _: True, params)

    def step(p, m, v, decay):
        t = count.astype(m.dtype)
        u = (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps)
        if decay and weight_decay:
            u = u + weight_decay * p
        return p - lr * u

    new_params = jax.tree.map(step, params, mu, nu, mask)
    return new_params, AdamWState(count, mu, nu)
