"""Building blocks as pure (init, apply) pairs over dicts of arrays.

Shape legend: B batch, T time (query positions), S source/key positions,
D model width, F feed-forward width, V vocabulary, H heads, K head width.

Parameters are always float32 (master weights); `apply` functions compute in the
dtype of their input activations, so bf16 activations give bf16 matmuls.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

INIT_STD = 0.02  # GPT-2's initialisation scale


def init_linear(key, d_in: int, d_out: int, *, bias: bool = True, std: float = INIT_STD) -> dict:
    p = {"w": std * jax.random.normal(key, (d_in, d_out), jnp.float32)}
    if bias:
        p["b"] = jnp.zeros((d_out,), jnp.float32)
    return p


@jax.custom_vjp
def matmul(x_BxTxD, w_DxE):
    """x @ w with a hand-written backward pass.

    The gradients are the textbook ones (dx = g w^T, dw = x^T g), but the forward pass
    hands x to the backward pass explicitly. With plain autodiff, XLA's CPU backend
    fused each weight gradient's transpose of x with a recomputation of the ops that
    produced x; this version measured 41% faster per training step at the nano-cpu
    shape and 30% at gpt-small (BENCHMARKS.md), with the same numbers."""
    return x_BxTxD @ w_DxE


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dw = jnp.einsum("nd,ne->de", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
    return g @ w.T, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def column_sums(g_NxE, dtype):
    """Sum over rows as a ones-vector product (a matrix-vector product on XLA's CPU
    backend, where a row reduction of this size went to a YNNPACK reduce call that
    cost 3x as much: ~17 us for 768x128), accumulated in at least float32."""
    acc = jnp.promote_types(g_NxE.dtype, jnp.float32)
    ones = jnp.ones((g_NxE.shape[0],), g_NxE.dtype)
    return jnp.dot(ones, g_NxE, preferred_element_type=acc).astype(dtype)


@jax.custom_vjp
def add_bias(y, b):
    """y + b for a b shaped like y's trailing axes (a bias E against BxTxE, a position
    table TxD against BxTxD), whose gradient for b is `column_sums` of the incoming
    gradient over y's leading axes. For the TxD position table of gpt-small the plain
    autodiff sum over the batch was a 2.4 ms YNNPACK reduce call per step."""
    return y + b


def _add_bias_fwd(y, b):
    return y + b, b  # b only for its shape (a parameter or a slice of one: kept anyway)


def _add_bias_bwd(b, g):  # b has y's dtype (callers cast it), so g's
    return g, column_sums(g.reshape(-1, b.size), g.dtype).reshape(b.shape)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def linear(p: dict, x_BxTxD):
    if "w_t" in p:  # the decoding-step layout, see `transposed_weights`
        y = jnp.einsum("ed,...d->...e", p["w_t"].astype(x_BxTxD.dtype), x_BxTxD)
    else:
        y = matmul(x_BxTxD, p["w"].astype(x_BxTxD.dtype))
    if "b" in p:
        y = add_bias(y, p["b"].astype(y.dtype))
    return y


def transposed_weights(tree):
    """The same parameters with every linear layer's weight stored transposed (E x D
    under "w_t" instead of D x E under "w"), for decoding one token at a time: there
    each product is a matrix-vector product, and XLA's CPU backend runs W^T x, which
    reads W^T row by row, faster than x W: gpt-small's sampler took 1.04-1.24 instead
    of 1.16-1.30 ms per token (6 alternating runs; BENCHMARKS.md). `linear` reads
    either layout."""
    if isinstance(tree, dict):
        if "w" in tree and getattr(tree["w"], "ndim", 0) == 2:
            return {("w_t" if k == "w" else k): (v.T if k == "w" else v) for k, v in tree.items()}
        return {k: transposed_weights(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(transposed_weights(v) for v in tree)
    return tree


def init_embedding(key, vocab: int, d: int, *, std: float = INIT_STD):
    return std * jax.random.normal(key, (vocab, d), jnp.float32)


def embed(table_VxD, ids_BxT, dtype):
    return jnp.take(table_VxD, ids_BxT, axis=0).astype(dtype)


def rotary(x_BxTxHxK, pos):
    """Rotary position embedding (Su et al. 2021, RoFormer) for positions pos..pos+T-1:
    channel pairs (i, i + K/2) are rotated by the angle p * 10000^(-2i/K) of their
    position p (the "rotate half" pairing of GPT-NeoX and LLaMA). Rotated queries and
    keys give scores q_m . k_n that depend on m - n only. pos may be traced."""
    t, k = x_BxTxHxK.shape[1], x_BxTxHxK.shape[-1]
    inv = 10000.0 ** (-jnp.arange(0, k // 2, dtype=jnp.float32) * 2.0 / k)
    angle_TxK2 = (pos + jnp.arange(t)).astype(jnp.float32)[:, None] * inv[None, :]
    cos, sin = jnp.cos(angle_TxK2)[:, None, :], jnp.sin(angle_TxK2)[:, None, :]  # Tx1x(K/2), broadcast over H
    x = at_least_f32(x_BxTxHxK)
    x1, x2 = x[..., : k // 2], x[..., k // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x_BxTxHxK.dtype)


def sinusoidal_positions(n: int, d: int) -> np.ndarray:
    """Vaswani et al. 2017, sec. 3.5: sin on even, cos on odd channels. Shape n x d."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    inv = np.exp(-math.log(10000.0) * np.arange(0, d, 2, dtype=np.float64) / d)
    table = np.zeros((n, d), np.float64)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv[: d // 2])
    return table.astype(np.float32)


def init_layer_norm(d: int) -> dict:
    return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}


def at_least_f32(x):
    """x in float32, or kept in float64 if it already is (numerical checks run in f64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def layer_norm(p: dict, x_BxTxD, eps: float):
    """LayerNorm over the last axis, statistics in (at least) float32 (Ba et al. 2016)."""
    return _layer_norm(x_BxTxD, p["scale"], p["bias"], eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x_BxTxD, scale_D, bias_D, eps: float):
    return _layer_norm_fwd(x_BxTxD, scale_D, bias_D, eps)[0]


def _row_means(x_BxTxD):
    """Mean over the last axis (kept, size 1) as a product with a constant vector, for
    the same reason as `column_sums`: a matrix-vector product on XLA's CPU backend
    instead of a YNNPACK reduce call (nano-cpu ~2% faster per step, gpt-small equal)."""
    d = x_BxTxD.shape[-1]
    return jnp.dot(x_BxTxD, jnp.full((d,), 1.0 / d, x_BxTxD.dtype))[..., None]


def _layer_norm_fwd(x_BxTxD, scale_D, bias_D, eps):
    x = at_least_f32(x_BxTxD)
    mean = _row_means(x)
    rstd = jax.lax.rsqrt(_row_means(jnp.square(x - mean)) + eps)
    xhat = (x - mean) * rstd
    y = xhat * scale_D.astype(x.dtype) + bias_D.astype(x.dtype)
    return y.astype(x_BxTxD.dtype), (xhat, rstd, scale_D)


def _layer_norm_bwd(eps, res, g_BxTxD):
    """The textbook LayerNorm backward: two row means for dx, and the parameters'
    gradients as `column_sums` (under autodiff each was a row reduction, a YNNPACK
    reduce call on XLA's CPU backend). With add_bias: ~7% faster per training step at
    gpt-small, ~3% at nano-cpu (BENCHMARKS.md)."""
    xhat, rstd, scale = res
    g = at_least_f32(g_BxTxD)
    d = g.shape[-1]
    dbias = column_sums(g.reshape(-1, d), scale.dtype)
    dscale = column_sums((g * xhat).reshape(-1, d), scale.dtype)
    dxhat = g * scale.astype(g.dtype)
    dx = rstd * (dxhat - _row_means(dxhat) - xhat * _row_means(dxhat * xhat))
    return dx.astype(g_BxTxD.dtype), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def gelu(x):
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), as GPT-2 uses."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def init_feed_forward(key, d: int, d_ff: int, *, bias: bool, n_layer: int) -> dict:
    k1, k2 = jax.random.split(key)
    # Residual projections scaled by 1/sqrt(2 * n_layer), as GPT-2 does.
    return {"fc": init_linear(k1, d, d_ff, bias=bias),
            "proj": init_linear(k2, d_ff, d, bias=bias, std=INIT_STD / math.sqrt(2 * n_layer))}


def feed_forward(p: dict, x_BxTxD):
    return linear(p["proj"], gelu(linear(p["fc"], x_BxTxD)))


def dropout(key, x, rate: float, *, train: bool):
    """Inverted dropout: zero with probability `rate`, scale survivors by 1/(1-rate).

    Identity when not training or rate == 0; `key` may then be None.
    """
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
