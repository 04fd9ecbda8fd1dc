"""kernels.py: each CPU fast path against its textbook version (layers.py, `x + table`,
`sum(x ** 2)`), values and gradients (jax.vjp with a random cotangent) in float32 and
float64; then whole models, loss and gradient, and the decoding steps' weight layout,
with kernels.FAST on and off."""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer import kernels, layers
from scratchformer.config import ModelConfig
from scratchformer.data import reverse
from scratchformer.loss import lm_loss, seq2seq_loss
from scratchformer.models import init_cache, init_encdec, init_lm, lm_forward
from scratchformer.optim.adamw import global_norm

from conftest import float64

# (rtol, atol) for fast vs plain: float32 rounding differs between the two orders of
# summation; float64 leaves only ~1e-16 rounding, so a wrong formula cannot hide there.
TOL = {"float32": (2e-5, 2e-6), "float64": (1e-11, 1e-13)}
DTYPES = pytest.mark.parametrize("dtype", ["float32", "float64"])


def _precision(dtype):
    """float64() for float64 checks, else nothing."""
    return float64() if dtype == "float64" else contextlib.nullcontext()


def _normal(rng, shape, dtype, loc=0.0, scale=1.0):
    return jnp.asarray(rng.normal(loc, scale, shape), dtype)


def _assert_same_function(fast, plain, args, dtype, seed=0):
    """fast(*args) == plain(*args) within TOL, and so are their vector-Jacobian products
    for one random cotangent, for every argument (shapes and dtypes included)."""
    y_fast, vjp_fast = jax.vjp(fast, *args)
    y_plain, vjp_plain = jax.vjp(plain, *args)
    g = _normal(np.random.default_rng(seed), y_plain.shape, y_plain.dtype)
    rtol, atol = TOL[dtype]
    for a, b in zip(jax.tree.leaves((y_fast, vjp_fast(g))), jax.tree.leaves((y_plain, vjp_plain(g)))):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- one fast path at a time
@DTYPES
@pytest.mark.parametrize("x_shape", [(2, 5, 8), (7, 8)])
def test_matmul_is_x_at_w(dtype, x_shape):
    rng = np.random.default_rng(0)
    with _precision(dtype):
        x, w = _normal(rng, x_shape, dtype), _normal(rng, (8, 6), dtype)
        _assert_same_function(kernels.matmul, lambda x, w: x @ w, (x, w), dtype)


@DTYPES
def test_column_sums_are_sums_over_rows(dtype):
    rng = np.random.default_rng(1)
    with _precision(dtype):
        g = _normal(rng, (37, 6), dtype)
        got = kernels.column_sums(g, g.dtype)
        assert got.dtype == g.dtype
        np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.sum(g, axis=0)), rtol=TOL[dtype][0],
                                   atol=TOL[dtype][1])


def test_column_sums_accumulate_bfloat16_in_float32():
    """bf16 rows whose bf16 running sum would lose the small terms: 1 + 256 x 2^-8 is 2
    when accumulated in float32, 1 in bfloat16 (2^-8 is below bf16's spacing at 1)."""
    g = jnp.concatenate([jnp.ones((1, 3)), jnp.full((256, 3), 2.0 ** -8)]).astype(jnp.bfloat16)
    got = kernels.column_sums(g, jnp.float32)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.full(3, 2.0, np.float32))


@DTYPES
@pytest.mark.parametrize("b_shape", [(4,), (5, 4)])  # a bias, a TxD position table
def test_add_bias_is_y_plus_b(dtype, b_shape):
    rng = np.random.default_rng(2)
    with _precision(dtype):
        y, b = _normal(rng, (3, 5, 4), dtype), _normal(rng, b_shape, dtype)
        _assert_same_function(kernels.add_bias, lambda y, b: y + b, (y, b), dtype)


@DTYPES
@pytest.mark.parametrize("bias", [True, False])
def test_fast_linear_is_layers_linear(dtype, bias):
    rng = np.random.default_rng(3)
    with _precision(dtype):
        p = {"w": _normal(rng, (8, 6), dtype), **({"b": _normal(rng, (6,), dtype)} if bias else {})}
        x = _normal(rng, (2, 5, 8), dtype)
        _assert_same_function(kernels.fast_linear, layers.linear, (p, x), dtype)


@DTYPES
def test_fast_layer_norm_is_layers_layer_norm(dtype):
    """Inputs far from mean 0 / variance 1 and gains and shifts far from 1 and 0, so each
    term of the hand-written backward pass shows."""
    rng = np.random.default_rng(4)
    with _precision(dtype):
        x = _normal(rng, (2, 5, 16), dtype, loc=3.0, scale=2.0)
        p = {"scale": _normal(rng, (16,), dtype, 1.0, 0.5), "bias": _normal(rng, (16,), dtype, 0.0, 0.5)}
        _assert_same_function(lambda p, x: kernels.fast_layer_norm(p, x, 1e-5),
                              lambda p, x: layers.layer_norm(p, x, 1e-5), (p, x), dtype)


def test_fast_layer_norm_in_bfloat16():
    """bf16 activations: the same dtypes as layers.layer_norm (bf16 out and dx, float32
    parameter gradients) and the same values to bf16's precision."""
    x = jnp.asarray(np.random.default_rng(5).normal(2.0, 3.0, (4, 16)), jnp.bfloat16)
    p = {"scale": jnp.linspace(0.5, 2.0, 16), "bias": jnp.linspace(-1.0, 1.0, 16)}
    outs = []
    for f in (kernels.fast_layer_norm, layers.layer_norm):
        y, (dp, dx) = jax.value_and_grad(lambda p, x: jnp.sum(f(p, x, 1e-5).astype(jnp.float32) ** 2),
                                         argnums=(0, 1))(p, x)
        assert f(p, x, 1e-5).dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16
        assert dp["scale"].dtype == jnp.float32 and dp["bias"].dtype == jnp.float32
        outs.append((y, dp, dx))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-2)


@DTYPES
@pytest.mark.parametrize("shape", [(7,), (9, 5), (3, 4, 6)])
def test_fast_sum_of_squares_is_the_sum_of_squares(dtype, shape):
    rng = np.random.default_rng(6)
    with _precision(dtype):
        x = _normal(rng, shape, dtype)
        _assert_same_function(lambda x: kernels.fast_sum_of_squares(x)[None], lambda x: jnp.sum(x * x)[None],
                              (x,), dtype)


def test_transposed_weights_give_the_same_linear_layers():
    """The decoding layout (weights stored E x D under "w_t") computes the same products;
    only 2-D "w" leaves change, wherever they sit in the tree."""
    tree = {"a": layers.init_linear(jax.random.PRNGKey(0), 8, 6),
            "b": [layers.init_linear(jax.random.PRNGKey(1), 6, 4, bias=False)], "ln": layers.init_layer_norm(8)}
    tree["a"]["b"] = jnp.arange(6.0)
    t = kernels.transposed_weights(tree)
    assert set(t["a"]) == {"w_t", "b"} and set(t["b"][0]) == {"w_t"}
    assert all(t["ln"][k] is v for k, v in tree["ln"].items())
    np.testing.assert_array_equal(np.asarray(t["a"]["w_t"]), np.asarray(tree["a"]["w"]).T)
    for shape in ((1, 1, 8), (3, 8)):  # one token, as in a decoding step; any leading axes
        x = jax.random.normal(jax.random.PRNGKey(2), shape)
        y = kernels.fast_linear(t["b"][0], kernels.fast_linear(t["a"], x))
        want = layers.linear(tree["b"][0], layers.linear(tree["a"], x))
        np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- the switch and whole models
LM_CFG = ModelConfig(n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=8, vocab_size=11, dropout=0.1)


def _both(monkeypatch, fn):
    """fn() traced and run with the fast paths, then with the textbook versions."""
    out = []
    for fast in (True, False):
        with monkeypatch.context() as m:
            m.setattr(kernels, "FAST", fast)
            out.append(fn())
    return out


def _in_dtype(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def _assert_trees_close(a, b, dtype):
    """Leaf by leaf; atol scaled by the tree's largest value, since some gradients are
    zero but for rounding (the attention key bias: softmax ignores a shared shift)."""
    rtol, atol = TOL[dtype]
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(b))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


def test_fast_switch_chooses_the_code(monkeypatch):
    """FAST=True puts the hand-written backward passes into the model and FAST=False
    takes every one of them out: the whole-model comparisons below compare two
    different computations."""
    params = init_lm(jax.random.PRNGKey(0), LM_CFG)
    batch = {"inputs": jnp.zeros((2, 8), jnp.int32), "targets": jnp.zeros((2, 8), jnp.int32)}
    jaxprs = _both(monkeypatch, lambda: str(jax.make_jaxpr(lambda p: lm_loss(p, batch, cfg=LM_CFG)[0])(params)))
    assert "custom_vjp_call" in jaxprs[0] and "custom_vjp_call" not in jaxprs[1]


@pytest.mark.parametrize("dtype,variant", [
    ("float32", dict()), ("float64", dict()), ("float64", dict(tie_embeddings=False, fused_qkv=False, bias=False)),
    ("float64", dict(positions="sinusoidal")), ("float64", dict(positions="rope")),
    ("float64", dict(norm="rmsnorm", qk_norm=True, activation="gelu", logit_softcap=3.0))])
def test_lm_loss_and_gradient_fast_equals_plain(monkeypatch, dtype, variant):
    """Training mode with dropout: every parameter's gradient, the LayerNorms', biases',
    position table's and tied embedding's included. float64 for each variant (where only
    a wrong formula could differ), float32 for the one training runs by default."""
    cfg = dataclasses.replace(LM_CFG, dtype=dtype, **variant)
    with _precision(dtype):
        params = _in_dtype(init_lm(jax.random.PRNGKey(0), cfg), dtype)
        # Perturbed, so that LayerNorm gains and biases are not 1 and 0.
        keys = jax.random.split(jax.random.PRNGKey(1), len(jax.tree.leaves(params)))
        params = jax.tree.unflatten(jax.tree.structure(params), [
            x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(jax.tree.leaves(params), keys)])
        ids = jax.random.randint(jax.random.PRNGKey(2), (3, 9), 0, cfg.vocab_size)
        batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}

        def loss_and_grad():
            return jax.value_and_grad(lambda p: lm_loss(p, batch, cfg=cfg, train=True, key=jax.random.PRNGKey(3))[0])(
                params)
        fast, plain = _both(monkeypatch, loss_and_grad)
        _assert_trees_close(fast, plain, dtype)
        assert global_norm(fast[1]) > 0


def test_encdec_loss_and_gradient_fast_equals_plain(monkeypatch):
    dtype = "float64"
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=8, vocab_size=11, dtype=dtype,
                      positions="learned", tie_embeddings=False)
    with _precision(dtype):
        params = _in_dtype(init_encdec(jax.random.PRNGKey(0), cfg), dtype)
        batch = reverse.make_examples(jnp.array([6, 3, 1]), jax.random.randint(jax.random.PRNGKey(5), (3, 6), 0, 8))

        def loss_and_grad():
            return jax.value_and_grad(lambda p: seq2seq_loss(p, batch, cfg=cfg, label_smoothing=0.1)[0])(params)
        fast, plain = _both(monkeypatch, loss_and_grad)
        _assert_trees_close(fast, plain, dtype)


@DTYPES
def test_global_norm_fast_equals_plain(monkeypatch, dtype):
    with _precision(dtype):
        tree = _in_dtype(init_lm(jax.random.PRNGKey(0), LM_CFG), dtype)
        fast, plain = _both(monkeypatch, lambda: jax.jit(global_norm)(tree))
        np.testing.assert_allclose(float(fast), float(plain), rtol=TOL[dtype][0])
        want = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree)))
        np.testing.assert_allclose(float(fast), want, rtol=TOL[dtype][0])


def test_decoding_layout_steps_give_the_forward_logits(monkeypatch):
    """Prefill three tokens, then two one-token cached steps with the blocks in
    decoding_layout: the logits of a plain forward over all five tokens, with the fast
    paths (the transposed layout) and without (the layout unchanged). In float64, where
    only a wrong product could differ."""
    cfg = dataclasses.replace(LM_CFG, dropout=0.0, dtype="float64")
    with float64():
        params = _in_dtype(init_lm(jax.random.PRNGKey(0), cfg), jnp.float64)
        ids = jnp.asarray([[3, 1, 4, 1, 5]])
        with monkeypatch.context() as m:
            m.setattr(kernels, "FAST", False)
            want, _ = lm_forward(params, ids, cfg=cfg)
            assert kernels.decoding_layout(params["blocks"]) is params["blocks"]

        def steps():
            step_params = {**params, "blocks": kernels.decoding_layout(params["blocks"])}
            out, cache = lm_forward(params, ids[:, :3], cfg=cfg, cache=init_cache(cfg, 1, 8), pos=0)
            outs = [out]
            for t in (3, 4):
                out, cache = lm_forward(step_params, ids[:, t:t + 1], cfg=cfg, cache=cache, pos=t)
                outs.append(out)
            return step_params, jnp.concatenate(outs, axis=1)
        (fast_params, fast), (_, plain) = _both(monkeypatch, steps)
        assert "w_t" in fast_params["blocks"][0]["mlp"]["fc"]
        for got in (fast, plain):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-11, atol=1e-13)
