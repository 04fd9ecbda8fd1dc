"""model.products: float32 linear layers with their products' inputs rounded to
bfloat16 and float32 sums (kernels.products). Checked against numpy: the same rounding
(ml_dtypes' bfloat16, which JAX uses) and then float64 products, for values and for
both gradients; the textbook and the fast path agree; a model's logits move by about
bfloat16's rounding and no more; "auto" picks bfloat16 only on a CPU with AMX."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer import kernels, layers
from scratchformer.config import ConfigError, ModelConfig
from scratchformer.models import init_lm, lm_forward
from scratchformer.runconfig import make_config

BF16 = jnp.dtype(jnp.bfloat16)


def _bf16_f64(a):
    """a rounded to bfloat16 (round to nearest even, as XLA's convert), as float64."""
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16)).astype(np.float64)


def _inputs(seed=0, shape=(3, 7, 16), d_out=24):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(shape[-1], d_out)), jnp.float32)
    g = jnp.asarray(rng.normal(size=shape[:-1] + (d_out,)), jnp.float32)
    return x, w, g


@pytest.mark.parametrize("fast", [True, False])
def test_products_round_inputs_and_sum_in_float32(fast):
    x, w, g = _inputs()
    f = (lambda x, w: kernels.matmul(x, w, BF16)) if fast else (lambda x, w: layers.linear({"w": w}, x, BF16))
    y, vjp = jax.vjp(f, x, w)
    dx, dw = vjp(g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32
    xr, wr, gr = _bf16_f64(x), _bf16_f64(w), np.asarray(g, np.float64)
    np.testing.assert_allclose(np.asarray(y), xr @ wr, rtol=1e-5, atol=1e-5)
    # The textbook path is differentiated by JAX (its dx passes through bfloat16); the
    # fast path's backward rounds the cotangent and keeps float32 results.
    tol = 1e-5 if fast else 1e-2
    g_in = _bf16_f64(g) if fast else gr
    np.testing.assert_allclose(np.asarray(dx), g_in @ wr.T, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(dw), xr.reshape(-1, 16).T @ g_in.reshape(-1, 24), rtol=tol, atol=tol)
    # ...and the rounding is real: float64 products of the unrounded inputs differ.
    assert np.abs(np.asarray(y) - np.asarray(x, np.float64) @ np.asarray(w, np.float64)).max() > 1e-3


def test_products_leave_bfloat16_and_float64_activations_alone():
    x, w, _ = _inputs()
    xb = x.astype(jnp.bfloat16)
    assert kernels.matmul(xb, w.astype(jnp.bfloat16), BF16).dtype == jnp.bfloat16
    np.testing.assert_array_equal(kernels.matmul(xb, w.astype(jnp.bfloat16), BF16),
                                  kernels.matmul(xb, w.astype(jnp.bfloat16)))
    np.testing.assert_array_equal(layers.linear({"w": w}, x, None), x @ w)


def _cfg(products, **kw):
    return ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=16, vocab_size=40,
                       products=products, **kw)


@pytest.mark.parametrize("fast", [True, False])
def test_model_logits_move_by_bfloat16_rounding_only(fast, monkeypatch):
    monkeypatch.setattr(kernels, "FAST", fast)
    cfg = _cfg("float32", tie_embeddings=False)
    params = init_lm(jax.random.PRNGKey(0), cfg)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 40)
    base = lm_forward(params, ids, cfg=cfg)[0]
    mixed = lm_forward(params, ids, cfg=dataclasses.replace(cfg, products="bfloat16"))[0]
    assert mixed.dtype == jnp.float32
    diff = float(jnp.abs(mixed - base).max())
    assert 1e-6 < diff < 2e-2 * float(jnp.abs(base).max()), diff


def test_model_gradients_fast_and_textbook_agree_under_products(monkeypatch):
    from scratchformer.loss import lm_loss
    cfg = _cfg("bfloat16")
    params = init_lm(jax.random.PRNGKey(0), cfg)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 17), 0, 40)

    def loss(p):
        total, count = lm_loss(p, {"inputs": ids[:, :-1], "targets": ids[:, 1:]}, cfg=cfg)
        return total / count

    grads = {}
    for fast in (True, False):
        monkeypatch.setattr(kernels, "FAST", fast)
        grads[fast] = jax.grad(loss)(params)
    # The textbook path's dx passes through bfloat16 (JAX's rule for the rounded input),
    # the fast path's does not: the two differ by about bfloat16's rounding (~0.4%).
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False])):
        assert float(jnp.abs(a - b).max()) <= 0.02 * float(jnp.abs(b).max()) + 1e-6


def test_auto_is_bfloat16_on_a_cpu_with_bfloat16_instructions_only(monkeypatch):
    monkeypatch.setattr(kernels, "has_bf16_products", lambda: True)
    assert kernels.product_dtype("auto", "cpu") == BF16
    assert kernels.product_dtype("auto", "gpu") is None
    monkeypatch.setattr(kernels, "has_bf16_products", lambda: False)
    assert kernels.product_dtype("auto", "cpu") is None
    assert kernels.product_dtype("float32") is None
    assert kernels.product_dtype("bfloat16", "gpu") == BF16


def test_cpu_presets_choose_by_machine():
    for preset in ("cpu-quick", "cpu-quick-classic", "cpu", "cpu-classic", "gpt2-finetune"):
        assert make_config("lm", preset).model.products == "auto"
    assert make_config("lm", "cpu-record").model.products == "float32"  # the last thousandths over speed
    assert ModelConfig().products == "float32"  # imports and tests: exact float32 unless asked


def test_bad_products_value_is_named():
    with pytest.raises(ConfigError, match=r"model.products='float16' is not one of auto, float32, bfloat16"):
        ModelConfig(products="float16")
