"""CPU fast paths for the linear layer, LayerNorm, the position add, the decoding
steps' weight layout and global_norm's sums of squares; and the dtype of the linear
layers' products (model.products: `products`, `product_dtype`).

Each computes the same numbers as its textbook version (layers.linear and
layers.layer_norm, `x + table`, `sum(x ** 2)`), up to the rounding of a different
order of summation; the tests check values and gradients against them. They are
written in a form that XLA's CPU backend runs faster: backward passes written by
hand, and sums written as products with a constant vector, which that backend runs
as matrix-vector products instead of slower reduce calls.

The model code (models.py, attention.py, decode.py, optim/adamw.py) calls `linear`,
`layer_norm`, `add_positions`, `decoding_layout` and `sum_of_squares` from the end of
this module, where FAST, and nothing else, decides which of the two versions runs.

Shape legend: B batch, T time, D input width, E output width, N rows (all leading
axes flattened).
"""

from __future__ import annotations

import contextlib
from functools import partial

import jax
import jax.numpy as jnp

from . import layers, machine
from .layers import at_least_f32


# ---------------------------------------------------------------- products
# The dtype of the linear layers' product inputs while a model function is traced
# (`products`); None: the activations' own dtype.
_PRODUCTS = None


def has_bf16_products() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware: AMX tiles (Linux's amx_bf16 flag)
    or AVX-512's BF16 dot products (avx512_bf16). XLA's CPU backend runs a bfloat16
    product with a float32 result faster than a float32 product on both, and slower
    without either (BENCHMARKS.md, "bfloat16 products (`model.products`)")."""
    flags = machine.cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def product_dtype(setting: str, backend: str | None = None):
    """The dtype model.products names (None: the activations' own). "auto" is bfloat16
    on a CPU with bfloat16 instructions (`has_bf16_products`), where the presets' steps
    are faster so, and None elsewhere."""
    if setting == "auto":
        backend = backend or jax.default_backend()
        return jnp.dtype(jnp.bfloat16) if backend == "cpu" and has_bf16_products() else None
    return None if setting == "float32" else jnp.dtype(setting)


@contextlib.contextmanager
def products(dtype):
    """Within (while tracing): a float32 linear layer rounds its input and weight to
    `dtype` (bfloat16) for the product and accumulates and returns float32, as mixed
    precision on a GPU does; everything element-wise stays float32. None: as the
    activations. Read at trace time, as jax.default_matmul_precision is (which XLA's
    CPU backend ignores)."""
    global _PRODUCTS
    before, _PRODUCTS = _PRODUCTS, (None if dtype is None else jnp.dtype(dtype))
    try:
        yield
    finally:
        _PRODUCTS = before


def rounded(x, dtype):
    """x as the input of a product in `dtype` (None, or x not float32: x as it is)."""
    return x.astype(dtype) if dtype is not None and x.dtype == jnp.float32 else x


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x_BxTxD, w_DxE, dtype=None):
    """x @ w with the textbook backward pass (dx = g w^T, dw = x^T g), which gets x
    from the forward pass: under plain autodiff XLA's CPU backend fuses the weight
    gradient's transpose of x with a recomputation of the ops that produced x. dtype:
    the three products' inputs rounded to it, float32 sums (`products`)."""
    return _matmul_fwd(x_BxTxD, w_DxE, dtype)[0]


def _matmul_fwd(x, w, dtype):
    x_in, w_in = rounded(x, dtype), rounded(w, dtype)  # kept rounded: half the memory in bf16
    return jnp.dot(x_in, w_in, preferred_element_type=x.dtype), (x_in, w_in)


def _matmul_bwd(dtype, res, g):
    # XLA's CPU backend runs a bfloat16 product in AMX or AVX-512 BF16 only when neither
    # operand is transposed; these two are computed in float32 there, still from the rounded
    # inputs (BENCHMARKS.md, "bfloat16 products (`model.products`)").
    x, w = res
    out, g_in = g.dtype, rounded(g, dtype)
    dw = jnp.einsum("nd,ne->de", x.reshape(-1, x.shape[-1]), g_in.reshape(-1, g.shape[-1]),
                    preferred_element_type=out)
    return jnp.dot(g_in, w.T, preferred_element_type=out), dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def column_sums(g_NxE, dtype):
    """Sum over rows, accumulated in at least float32, as a ones-vector product: XLA's
    CPU backend runs it as a matrix-vector product instead of a slower reduce call."""
    acc = jnp.promote_types(g_NxE.dtype, jnp.float32)
    ones = jnp.ones((g_NxE.shape[0],), g_NxE.dtype)
    return jnp.dot(ones, g_NxE, preferred_element_type=acc).astype(dtype)


@jax.custom_vjp
def add_bias(y, b):
    """y + b for a b shaped like y's trailing axes (a bias E against BxTxE, a position
    table TxD against BxTxD); b's gradient, a sum over y's leading axes, is taken by
    `column_sums`."""
    return y + b


def _add_bias_fwd(y, b):
    return y + b, b  # b only for its shape (a parameter or a slice of one: kept anyway)


def _add_bias_bwd(b, g):  # b has y's dtype (callers cast it), so g's
    return g, column_sums(g.reshape(-1, b.size), g.dtype).reshape(b.shape)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def fast_linear(p: dict, x_BxTxD):
    """layers.linear through `matmul` and `add_bias`; also reads the decoding layout
    of `transposed_weights`."""
    if "w_t" in p:
        w_t = rounded(p["w_t"].astype(x_BxTxD.dtype), _PRODUCTS)
        y = jnp.einsum("ed,...d->...e", w_t, rounded(x_BxTxD, _PRODUCTS), preferred_element_type=x_BxTxD.dtype)
    else:
        y = matmul(x_BxTxD, p["w"].astype(x_BxTxD.dtype), _PRODUCTS)
    if "b" in p:
        y = add_bias(y, p["b"].astype(y.dtype))
    return y


def transposed_weights(tree):
    """The same parameters with every linear layer's weight stored transposed (E x D
    under "w_t" instead of D x E under "w"), for decoding one token at a time: each
    product is then a matrix-vector product, and XLA's CPU backend runs W^T x, which
    reads W^T row by row, faster than x W. Only `fast_linear` reads this layout."""
    if isinstance(tree, dict):
        if "w" in tree and getattr(tree["w"], "ndim", 0) == 2:
            return {("w_t" if k == "w" else k): (v.T if k == "w" else v) for k, v in tree.items()}
        return {k: transposed_weights(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(transposed_weights(v) for v in tree)
    return tree


def fast_sum_of_squares(x):
    """sum(x ** 2), for a matrix as `column_sums` of the squares and then a short sum: a
    whole-matrix reduction to a scalar is a slow reduce call on XLA's CPU backend, and
    so is x . x, which XLA rewrites into that reduction."""
    if x.ndim < 2:
        return jnp.sum(jnp.square(x))
    return jnp.sum(column_sums(jnp.square(x).reshape(-1, x.shape[-1]), x.dtype))


# ---------------------------------------------------------------- LayerNorm
def row_means(x_BxTxD):
    """Mean over the last axis (kept, size 1) as a product with a constant vector, a
    matrix-vector product on XLA's CPU backend rather than a reduce call."""
    d = x_BxTxD.shape[-1]
    return jnp.dot(x_BxTxD, jnp.full((d,), 1.0 / d, x_BxTxD.dtype))[..., None]


def fast_layer_norm(p: dict, x_BxTxD, eps: float):
    """layers.layer_norm with its means as `row_means` and a hand-written backward pass."""
    return _layer_norm(x_BxTxD, p["scale"], p["bias"], eps)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x_BxTxD, scale_D, bias_D, eps: float):
    return _layer_norm_fwd(x_BxTxD, scale_D, bias_D, eps)[0]


def _layer_norm_fwd(x_BxTxD, scale_D, bias_D, eps):
    x = at_least_f32(x_BxTxD)
    mean = row_means(x)
    rstd = jax.lax.rsqrt(row_means(jnp.square(x - mean)) + eps)
    xhat = (x - mean) * rstd
    y = xhat * scale_D.astype(x.dtype) + bias_D.astype(x.dtype)
    return y.astype(x_BxTxD.dtype), (xhat, rstd, scale_D)


def _layer_norm_bwd(eps, res, g_BxTxD):
    """The textbook LayerNorm backward, dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat
    xhat)) with dxhat = g scale, its means as `row_means` and the parameters' gradients
    as `column_sums` (autodiff would make each a reduce call)."""
    xhat, rstd, scale = res
    g = at_least_f32(g_BxTxD)
    d = g.shape[-1]
    dbias = column_sums(g.reshape(-1, d), scale.dtype)
    dscale = column_sums((g * xhat).reshape(-1, d), scale.dtype)
    dxhat = g * scale.astype(g.dtype)
    dx = rstd * (dxhat - row_means(dxhat) - xhat * row_means(dxhat * xhat))
    return dx.astype(g_BxTxD.dtype), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


# ---------------------------------------------------------------- the choice
FAST = True
"""True: the model code runs the fast paths above; False: the textbook versions (the
tests compare the two). Read when a function is traced, so set it before jit-compiling."""


def linear(p: dict, x_BxTxD):
    y = fast_linear(p, x_BxTxD) if FAST else layers.linear(p, x_BxTxD, _PRODUCTS)
    if "lora" in p:  # a LoRA adapter beside the frozen weight, while training (lora.py): + dropout(x) A B
        y = y + layers.low_rank(p["lora"], x_BxTxD, _PRODUCTS)
    return y


def layer_norm(p: dict, x_BxTxD, eps: float):
    return fast_layer_norm(p, x_BxTxD, eps) if FAST else layers.layer_norm(p, x_BxTxD, eps)


def add_positions(x_BxTxD, pos_TxD):
    """x + the position vectors of its T positions, in x's dtype."""
    pos_TxD = pos_TxD.astype(x_BxTxD.dtype)
    return add_bias(x_BxTxD, pos_TxD) if FAST else x_BxTxD + pos_TxD


def decoding_layout(tree):
    """The parameters as one-token decoding steps read them (see `transposed_weights`)."""
    return transposed_weights(tree) if FAST else tree


def sum_of_squares(x):
    return fast_sum_of_squares(x) if FAST else jnp.sum(jnp.square(x))
