"""Layers: LayerNorm and sinusoids against closed forms, the hand-written backward
passes (LayerNorm, bias) against autodiff of the plain formulas and finite
differences, dropout's statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from scratchformer.layers import (add_bias, dropout, gelu, init_layer_norm, init_linear, layer_norm, linear, rotary,
                                  sinusoidal_positions, transposed_weights)

from conftest import float64


def test_layer_norm_matches_numpy():
    x = np.random.default_rng(0).normal(3.0, 2.0, (2, 3, 8)).astype(np.float32)
    p = {"scale": jnp.linspace(0.5, 2.0, 8), "bias": jnp.linspace(-1.0, 1.0, 8)}
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * np.asarray(p["scale"]) \
        + np.asarray(p["bias"])
    np.testing.assert_allclose(np.asarray(layer_norm(p, jnp.asarray(x), 1e-5)), want, rtol=1e-5, atol=1e-5)
    assert init_layer_norm(4)["scale"].shape == (4,)


def _plain_layer_norm(p, x, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def test_layer_norm_and_linear_gradients_match_autodiff_and_finite_differences():
    rng = np.random.default_rng(1)
    with float64():
        x = jnp.asarray(rng.normal(3.0, 2.0, (2, 5, 8)))
        ln = {"scale": jnp.asarray(rng.normal(1.0, 0.3, 8)), "bias": jnp.asarray(rng.normal(0.0, 0.3, 8))}
        lin = {"w": jnp.asarray(rng.normal(0.0, 0.3, (8, 6))), "b": jnp.asarray(rng.normal(0.0, 0.3, 6))}
        g = jnp.asarray(rng.normal(size=(2, 5, 6)))

        def ours(x, ln, lin):
            return jnp.sum(linear(lin, layer_norm(ln, x, 1e-5)) * g)

        def plain(x, ln, lin):
            return jnp.sum((_plain_layer_norm(ln, x, 1e-5) @ lin["w"] + lin["b"]) * g)

        got = jax.grad(ours, argnums=(0, 1, 2))(x, ln, lin)
        want = jax.grad(plain, argnums=(0, 1, 2))(x, ln, lin)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), got, want)
        # and one direction by central differences, independent of autodiff
        d = [jnp.asarray(rng.normal(size=a.shape)) for a in (x, ln["scale"], lin["b"])]

        def along(t):
            return ours(x + t * d[0], {**ln, "scale": ln["scale"] + t * d[1]}, {**lin, "b": lin["b"] + t * d[2]})
        fd = (along(1e-6) - along(-1e-6)) / 2e-6
        analytic = jnp.sum(got[0] * d[0]) + jnp.sum(got[1]["scale"] * d[1]) + jnp.sum(got[2]["b"] * d[2])
        np.testing.assert_allclose(fd, analytic, rtol=1e-7)


def test_add_bias_gradients_for_a_vector_and_a_table():
    """The bias gradient is a sum over all leading axes, for a bias E and for a TxD
    position table against BxTxD alike; checked against autodiff of plain y + b."""
    rng = np.random.default_rng(3)
    with float64():
        y = jnp.asarray(rng.normal(size=(3, 5, 4)))
        g = jnp.asarray(rng.normal(size=(3, 5, 4)))
        for b in (jnp.asarray(rng.normal(size=(4,))), jnp.asarray(rng.normal(size=(5, 4)))):
            got = jax.grad(lambda y, b: jnp.sum(add_bias(y, b) * g), argnums=(0, 1))(y, b)
            want = jax.grad(lambda y, b: jnp.sum((y + b) * g), argnums=(0, 1))(y, b)
            assert got[1].shape == b.shape
            jax.tree.map(lambda a, w: np.testing.assert_allclose(a, w, rtol=1e-12), got, want)


def test_transposed_weights_give_the_same_linear_layers():
    """The decoding layout (weights stored E x D under "w_t") computes the same products;
    only 2-D "w" leaves change, wherever they sit in the tree."""
    tree = {"a": init_linear(jax.random.PRNGKey(0), 8, 6), "b": [init_linear(jax.random.PRNGKey(1), 6, 4, bias=False)],
            "ln": init_layer_norm(8)}
    t = transposed_weights(tree)
    assert set(t["a"]) == {"w_t", "b"} and set(t["b"][0]) == {"w_t"}
    assert all(t["ln"][k] is v for k, v in tree["ln"].items())
    np.testing.assert_array_equal(np.asarray(t["a"]["w_t"]), np.asarray(tree["a"]["w"]).T)
    for shape in ((1, 1, 8), (3, 8)):  # one token, as in a decoding step; any leading axes
        x = jax.random.normal(jax.random.PRNGKey(2), shape)
        y = linear(t["b"][0], linear(t["a"], x))
        want = linear(tree["b"][0], linear(tree["a"], x))
        np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_layer_norm_gradient_dtypes_in_bfloat16():
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
