"""Layers in their textbook form: LayerNorm and sinusoids against closed forms, the
linear layer's and LayerNorm's gradients against finite differences, rotary positions,
RMSNorm, the activations, dropout's statistics. (kernels.py's fast paths are checked against these in
test_kernels.py.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from scratchformer.layers import (dropout, gelu, gelu_exact, init_layer_norm, init_linear, init_rms_norm, layer_norm,
                                  linear, relu2, rms_norm, rms_normalise, rotary, sinusoidal_positions)

from conftest import float64


def _numpy_layer_norm(x, scale, bias, eps):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def test_layer_norm_matches_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 3, 8)).astype(np.float32)
    p = {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)}
    want = _numpy_layer_norm(x, np.asarray(p["scale"]), np.asarray(p["bias"]), 1e-5)
    np.testing.assert_allclose(np.asarray(layer_norm(p, jnp.asarray(x), 1e-5)), want, rtol=1e-5, atol=1e-5)
    with float64():
        x64 = x.astype(np.float64)
        got = layer_norm(jax.tree.map(lambda a: a.astype(jnp.float64), p), jnp.asarray(x64), 1e-5)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), _numpy_layer_norm(x64, np.asarray(p["scale"], np.float64),
                                                                      np.asarray(p["bias"], np.float64), 1e-5),
                                   rtol=1e-12, atol=1e-12)
    assert init_layer_norm(4)["scale"].shape == (4,)


def test_linear_is_x_w_plus_b():
    lin = init_linear(jax.random.PRNGKey(0), 8, 6)
    lin["b"] = jnp.arange(6.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
    want = np.einsum("btd,de->bte", np.asarray(x, np.float64), np.asarray(lin["w"], np.float64)) + np.arange(6.0)
    np.testing.assert_allclose(np.asarray(linear(lin, x)), want, rtol=1e-5, atol=1e-6)
    no_bias = init_linear(jax.random.PRNGKey(0), 8, 6, bias=False)
    assert set(no_bias) == {"w"}
    np.testing.assert_allclose(np.asarray(linear(no_bias, x)), want - np.arange(6.0), rtol=1e-5, atol=1e-6)


def test_layer_norm_and_linear_gradients_match_finite_differences():
    """Directional derivatives of a LayerNorm then a linear layer (float64) by central
    differences, along a random direction in x, the LayerNorm gains and the biases."""
    rng = np.random.default_rng(1)
    with float64():
        x = jnp.asarray(rng.normal(3.0, 2.0, (2, 5, 8)))
        ln = {"scale": jnp.asarray(rng.normal(1.0, 0.3, 8)), "bias": jnp.asarray(rng.normal(0.0, 0.3, 8))}
        lin = {"w": jnp.asarray(rng.normal(0.0, 0.3, (8, 6))), "b": jnp.asarray(rng.normal(0.0, 0.3, 6))}
        g = jnp.asarray(rng.normal(size=(2, 5, 6)))

        def f(x, ln, lin):
            return jnp.sum(linear(lin, layer_norm(ln, x, 1e-5)) * g)

        got = jax.grad(f, argnums=(0, 1, 2))(x, ln, lin)
        d = [jnp.asarray(rng.normal(size=a.shape)) for a in (x, ln["scale"], ln["bias"], lin["w"], lin["b"])]

        def along(t):
            return f(x + t * d[0], {"scale": ln["scale"] + t * d[1], "bias": ln["bias"] + t * d[2]},
                     {"w": lin["w"] + t * d[3], "b": lin["b"] + t * d[4]})
        fd = (along(1e-6) - along(-1e-6)) / 2e-6
        analytic = sum(jnp.sum(a * b) for a, b in zip(
            (got[0], got[1]["scale"], got[1]["bias"], got[2]["w"], got[2]["b"]), d))
        np.testing.assert_allclose(fd, analytic, rtol=1e-7)


def test_layer_norm_dtypes_in_bfloat16():
    """bf16 activations in, bf16 out and bf16 gradient for x; the float32 parameters'
    gradients stay float32."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8)), jnp.bfloat16)
    p = init_layer_norm(8)
    dx, dp = jax.grad(lambda x, p: jnp.sum(layer_norm(p, x, 1e-5).astype(jnp.float32) ** 2), argnums=(0, 1))(x, p)
    assert dx.dtype == jnp.bfloat16 and dp["scale"].dtype == jnp.float32 and dp["bias"].dtype == jnp.float32
    assert layer_norm(p, x, 1e-5).dtype == jnp.bfloat16


def test_sinusoidal_formula():
    table = sinusoidal_positions(10, 6)
    pos, i = 7, 2  # channel pair 2 -> dims 4 (sin) and 5 (cos)
    angle = pos / 10000 ** (2 * i / 6)
    assert np.isclose(table[pos, 4], np.sin(angle)) and np.isclose(table[pos, 5], np.cos(angle))


def test_rotary_is_a_complex_rotation():
    """Channel pair (i, i + K/2) read as the complex number x_i + j x_{i+K/2} is multiplied
    by exp(j p 10000^(-2i/K)) at position p (numpy complex arithmetic as the reference)."""
    x = np.random.default_rng(3).normal(size=(2, 5, 3, 8))
    pos = 4
    z = x[..., :4] + 1j * x[..., 4:]
    angle = (pos + np.arange(5))[:, None, None] * 10000.0 ** (-2 * np.arange(4) / 8)
    want = z * np.exp(1j * angle)
    got = np.asarray(rotary(jnp.asarray(x, jnp.float32), pos))
    np.testing.assert_allclose(got, np.concatenate([want.real, want.imag], -1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rotary(jnp.asarray(x, jnp.float32), 0))[:, 0], x[:, 0], rtol=1e-6)


def test_rotary_scores_depend_on_relative_position_only():
    rng = np.random.default_rng(4)
    q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32) for _ in range(2))
    score = lambda m, n: float(jnp.sum(rotary(q, m) * rotary(k, n)))
    for m, n, shift in [(5, 2, 7), (0, 0, 30), (3, 9, 11), (40, 1, 200)]:
        assert np.isclose(score(m, n), score(m + shift, n + shift), rtol=1e-4, atol=1e-5)
    assert not np.isclose(score(5, 2), score(5, 3), rtol=1e-3)


def test_gelu_tanh_form():
    x = jnp.linspace(-4.0, 4.0, 17)
    np.testing.assert_allclose(np.asarray(gelu(x)), np.asarray(jax.nn.gelu(x, approximate=True)), rtol=1e-5,
                               atol=1e-6)


def test_exact_gelu_and_relu_squared():
    x = np.linspace(-4.0, 4.0, 33)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(np.asarray(gelu_exact(jnp.asarray(x, jnp.float32))), want, rtol=1e-5, atol=1e-6)
    assert np.abs(want - np.asarray(gelu(jnp.asarray(x, jnp.float32)))).max() > 1e-4  # not the tanh form
    np.testing.assert_array_equal(np.asarray(relu2(jnp.asarray(x, jnp.float32))), np.where(x > 0, x * x, 0.0))


def test_rms_norm_matches_numpy():
    """x / sqrt(mean(x^2) + eps) * scale: no mean removed (the input has mean 3), no bias;
    statistics in float32 for bfloat16 inputs."""
    x = np.random.default_rng(5).normal(3.0, 2.0, (2, 3, 8))
    scale = np.linspace(0.5, 2.0, 8)
    want = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-5) * scale
    p = {"scale": jnp.asarray(scale, jnp.float32)}
    np.testing.assert_allclose(np.asarray(rms_norm(p, jnp.asarray(x, jnp.float32), 1e-5)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rms_normalise(jnp.asarray(x, jnp.float32), 1e-5)), want / scale,
                               rtol=1e-5, atol=1e-5)
    assert set(init_rms_norm(8)) == {"scale"} and (np.asarray(init_rms_norm(8)["scale"]) == 1).all()
    y = rms_norm(p, jnp.asarray(x, jnp.bfloat16), 1e-5)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2e-2, atol=2e-2)


def test_init_linear_with_std_zero_is_exactly_zero():
    w = np.asarray(init_linear(jax.random.PRNGKey(0), 8, 6, std=0.0)["w"])
    assert (w == 0).all() and not np.signbit(w).any()


def test_dropout_identity_in_eval():
    x = jnp.ones((4, 5))
    assert dropout(None, x, 0.5, train=False) is x
    assert dropout(jax.random.PRNGKey(0), x, 0.0, train=True) is x


def test_dropout_keep_rate_scale_and_keys():
    rate, n = 0.3, 200_000
    x = jnp.ones((n,))
    y = np.asarray(dropout(jax.random.PRNGKey(0), x, rate, train=True))
    kept = y != 0
    # Keep rate within 5 standard deviations of a binomial(n, 0.7).
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)  # inverted scaling keeps E[y] = x
    y2 = np.asarray(dropout(jax.random.PRNGKey(1), x, rate, train=True))
    assert (kept != (y2 != 0)).any()                                  # a new key, a new mask
    np.testing.assert_array_equal(y, np.asarray(dropout(jax.random.PRNGKey(0), x, rate, train=True)))
