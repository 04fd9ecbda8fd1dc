"""Layers: LayerNorm and sinusoids against closed forms, dropout's statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from scratchformer.layers import dropout, gelu, init_layer_norm, layer_norm, sinusoidal_positions


def test_layer_norm_matches_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 3, 8)).astype(np.float32)
    p = {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)}
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * np.asarray(p["scale"]) \
        + np.asarray(p["bias"])
    np.testing.assert_allclose(np.asarray(layer_norm(p, jnp.asarray(x), 1e-5)), want, rtol=1e-5, atol=1e-5)
    assert init_layer_norm(4)["scale"].shape == (4,)


def test_sinusoidal_formula():
    table = sinusoidal_positions(10, 6)
    pos, i = 7, 2  # channel pair 2 -> dims 4 (sin) and 5 (cos)
    angle = pos / 10000 ** (2 * i / 6)
    assert np.isclose(table[pos, 4], np.sin(angle)) and np.isclose(table[pos, 5], np.cos(angle))


def test_gelu_tanh_form():
    x = jnp.linspace(-4.0, 4.0, 17)
    np.testing.assert_allclose(np.asarray(gelu(x)), np.asarray(jax.nn.gelu(x, approximate=True)), rtol=1e-5,
                               atol=1e-6)


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
