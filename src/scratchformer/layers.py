"""Building blocks as pure (init, apply) pairs over dicts of arrays, in their textbook
form. The model code runs `linear` and `layer_norm` through kernels.py, which holds
CPU fast paths that compute the same numbers and chooses between the two.

Shape legend: B batch, T time, D model width, V vocabulary, H heads, K head width.

Parameters are always float32 (master weights); `apply` functions compute in the
dtype of their input activations, so bf16 activations give bf16 matmuls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

INIT_STD = 0.02  # GPT-2's initialisation scale


def at_least_f32(x):
    """x in float32, or kept in float64 if it already is (numerical checks run in f64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def init_linear(key, d_in: int, d_out: int, *, bias: bool = True, std: float = INIT_STD) -> dict:
    # std 0 gives exact zeros (0 * a negative draw would be -0.0).
    w = std * jax.random.normal(key, (d_in, d_out), jnp.float32) if std else jnp.zeros((d_in, d_out), jnp.float32)
    p = {"w": w}
    if bias:
        p["b"] = jnp.zeros((d_out,), jnp.float32)
    return p


def linear(p: dict, x_BxTxD, products=None):
    """x @ w + b (b only if the layer has one), computed in the dtype of x; products: a
    float32 x and w rounded to this dtype for the product, accumulated in float32."""
    w = p["w"].astype(x_BxTxD.dtype)
    if products is not None and x_BxTxD.dtype == jnp.float32:
        y = jnp.dot(x_BxTxD.astype(products), w.astype(products), preferred_element_type=jnp.float32)
    else:
        y = x_BxTxD @ w
    if "b" in p:
        y = y + p["b"].astype(y.dtype)
    return y


@partial(jax.tree_util.register_dataclass, data_fields=["a", "b", "key"], meta_fields=["rate"])
@dataclass(frozen=True)
class LowRank:
    """A LoRA adapter (Hu et al. 2021) beside a linear layer's frozen weight, as the
    training step passes it in the layer's params under "lora" (lora.py builds it):
    A (I x R), B (R x O) already scaled by alpha / rank, and the dropout on the
    adapter's input: its rate (static, not a leaf) and key (None when the rate is 0)."""
    a: Any
    b: Any
    key: Any = None
    rate: float = 0.0


def low_rank(p: LowRank, x_BxTxI, products=None):
    """The adapter's path, dropout(x) A B, in the dtype of x (`linear`'s products)."""
    x = x_BxTxI if p.key is None else dropout(p.key, x_BxTxI, p.rate, train=True)
    return linear({"w": p.b}, linear({"w": p.a}, x, products), products)


def out_std(n_layer: int, zero: bool = False) -> float:
    """Init std of a projection back into the residual stream: GPT-2's 0.02 / sqrt(2 L)
    (one per residual branch), or 0 (modded-nanogpt: each block starts as the identity)."""
    return 0.0 if zero else INIT_STD / math.sqrt(2 * n_layer)


def init_embedding(key, vocab: int, d: int, *, std: float = INIT_STD):
    return std * jax.random.normal(key, (vocab, d), jnp.float32)


def embed(table_VxD, ids_BxT, dtype):
    return jnp.take(table_VxD, ids_BxT, axis=0).astype(dtype)


def sinusoidal_positions(n: int, d: int) -> np.ndarray:
    """Vaswani et al. 2017, sec. 3.5: sin on even, cos on odd channels. Shape n x d."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    inv = np.exp(-math.log(10000.0) * np.arange(0, d, 2, dtype=np.float64) / d)
    table = np.zeros((n, d), np.float64)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv[: d // 2])
    return table.astype(np.float32)


def rope_frequencies(k: int, theta: float = 10000.0, llama3=None, dtype=jnp.float32):
    """The K/2 angular frequencies theta^(-2i/K), i = 0..K/2-1, of rotary positions.
    llama3 = (factor, low_freq_factor, high_freq_factor, original_positions) rescales
    them as Llama 3.1 does (transformers' _compute_llama3_parameters): a frequency whose
    wavelength 2 pi / f is longer than original_positions / low_freq_factor is divided
    by factor, one shorter than original_positions / high_freq_factor is kept, and those
    between are blended linearly in original_positions / wavelength."""
    inv = theta ** (-jnp.arange(0, k // 2, dtype=dtype) * 2.0 / k)
    if llama3 is None:
        return inv
    factor, low, high, original = llama3
    wavelength = 2 * math.pi / inv
    smooth = (original / wavelength - low) / (high - low)  # 0 at the long end of the band, 1 at the short
    blended = (1 - smooth) * inv / factor + smooth * inv
    return jnp.where(wavelength > original / low, inv / factor,
                     jnp.where(wavelength < original / high, inv, blended))


def rotary(x_BxTxHxK, pos, theta: float = 10000.0, llama3=None):
    """Rotary position embedding (Su et al. 2021, RoFormer) for positions pos..pos+T-1:
    channel pairs (i, i + K/2) are rotated by the angle p f_i of their position p, f the
    `rope_frequencies` (theta, llama3) (the "rotate half" pairing of GPT-NeoX and LLaMA).
    Rotated queries and keys give scores q_m . k_n that depend on m - n only. pos may be
    traced. Angles in float32 (float64 for a float64 x)."""
    t, k = x_BxTxHxK.shape[1], x_BxTxHxK.shape[-1]
    dt = jnp.promote_types(x_BxTxHxK.dtype, jnp.float32)
    inv = rope_frequencies(k, theta, llama3, dt)
    angle_TxK2 = (pos + jnp.arange(t)).astype(dt)[:, None] * inv[None, :]
    cos, sin = jnp.cos(angle_TxK2)[:, None, :], jnp.sin(angle_TxK2)[:, None, :]  # Tx1x(K/2), broadcast over H
    x = at_least_f32(x_BxTxHxK)
    x1, x2 = x[..., : k // 2], x[..., k // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x_BxTxHxK.dtype)


def init_layer_norm(d: int) -> dict:
    return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}


def layer_norm(p: dict, x_BxTxD, eps: float):
    """LayerNorm over the last axis (Ba et al. 2016): each position's D features shifted
    to mean 0 and scaled to variance 1, then scaled and shifted by the parameters.
    Statistics in (at least) float32, also for bfloat16 activations."""
    x = at_least_f32(x_BxTxD)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    xhat = (x - mean) * jax.lax.rsqrt(var + eps)
    y = xhat * p["scale"].astype(x.dtype) + p["bias"].astype(x.dtype)
    return y.astype(x_BxTxD.dtype)


def init_rms_norm(d: int) -> dict:
    return {"scale": jnp.ones((d,), jnp.float32)}


def rms_normalise(x, eps: float):
    """x / sqrt(mean(x^2) + eps) over the last axis, statistics in (at least) float32."""
    x32 = at_least_f32(x)
    return (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)).astype(x.dtype)


def rms_norm(p: dict, x_BxTxD, eps: float):
    """RMSNorm (Zhang & Sennrich 2019): LayerNorm without the mean subtracted and without
    the bias; each position divided by its root mean square, then scaled."""
    x = at_least_f32(x_BxTxD)
    return (rms_normalise(x, eps) * p["scale"].astype(x.dtype)).astype(x_BxTxD.dtype)


def gelu(x):
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), as GPT-2 uses."""
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x):
    """GELU as defined, x * Phi(x) with the normal CDF Phi written with erf."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def silu(x):
    """SiLU, x * sigmoid(x) (Elfwing et al. 2018; Hendrycks & Gimpel's "SiLU"), the
    gate of SwiGLU (Shazeer 2020)."""
    return x * jax.nn.sigmoid(x)


def relu2(x):
    """ReLU squared (So et al. 2021, Primer)."""
    return jnp.square(jax.nn.relu(x))


def dropout(key, x, rate: float, *, train: bool):
    """Inverted dropout: zero with probability `rate`, scale survivors by 1/(1-rate).

    Identity when not training or rate == 0; `key` may then be None.
    """
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
