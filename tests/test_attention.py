"""Multi-head attention against a naive per-head, per-position numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer.attention import (attend, attend_causal, causal_mask, cross_attention, cross_kv,
                                     init_cross_attention, init_self_attention, padding_mask, self_attention)


def naive_attention(x_q, x_kv, wq, bq, wk, bk, wv, bv, wo, bo, n_head, allowed):
    """allowed[b, t, s]: may query t of batch b look at key s."""
    b_, t_, d = x_q.shape
    s_ = x_kv.shape[1]
    k_ = d // n_head
    q = x_q @ wq + bq
    k = x_kv @ wk + bk
    v = x_kv @ wv + bv
    y = np.zeros((b_, t_, d))
    for b in range(b_):
        for h in range(n_head):
            sl = slice(h * k_, (h + 1) * k_)
            for t in range(t_):
                scores = [q[b, t, sl] @ k[b, s, sl] / np.sqrt(k_) for s in range(s_)]
                scores = np.array([sc if allowed[b, t, s] else -np.inf for s, sc in enumerate(scores)])
                if np.all(np.isinf(scores)):
                    scores = np.zeros(s_)  # fully masked: uniform (our documented behaviour)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                y[b, t, sl] = sum(p[s] * v[b, s, sl] for s in range(s_))
    return y @ wo + bo


def _np(p):
    return {k: np.asarray(v, np.float64) for k, v in p.items()}


@pytest.mark.parametrize("fused", [True, False])
def test_self_attention_causal_and_padding(fused):
    b, t, d, h = 2, 5, 8, 2
    key = jax.random.PRNGKey(0)
    p = init_self_attention(key, d, fused=fused, bias=True, n_layer=1)
    p = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(9), a.shape), p)  # nonzero biases
    x = jax.random.normal(jax.random.PRNGKey(1), (b, t, d))
    valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    mask = causal_mask(t) & padding_mask(jnp.asarray(valid))
    y, _, _ = self_attention(p, x, n_head=h, mask=mask)
    if fused:
        w, bias = np.asarray(p["qkv"]["w"]), np.asarray(p["qkv"]["b"])
        parts = [(w[:, i * d:(i + 1) * d], bias[i * d:(i + 1) * d]) for i in range(3)]
    else:
        parts = [(np.asarray(p[n]["w"]), np.asarray(p[n]["b"])) for n in "qkv"]
    allowed = np.tril(np.ones((t, t), bool))[None] & valid[:, None, :]
    want = naive_attention(np.asarray(x), np.asarray(x), *parts[0], *parts[1], *parts[2],
                           np.asarray(p["out"]["w"]), np.asarray(p["out"]["b"]), h, allowed)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)


def test_cross_attention_with_padding_and_fully_masked_row():
    b, t, s, d, h = 2, 3, 4, 8, 4
    p = init_cross_attention(jax.random.PRNGKey(2), d, fused=False, bias=True, n_layer=1)
    x = jax.random.normal(jax.random.PRNGKey(3), (b, t, d))
    mem = jax.random.normal(jax.random.PRNGKey(4), (b, s, d))
    valid = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)  # second source entirely padding
    y, probs = cross_attention(p, x, cross_kv(p, mem, h), n_head=h, mask=padding_mask(jnp.asarray(valid)))
    assert np.all(np.isfinite(np.asarray(y))) and np.all(np.isfinite(np.asarray(probs)))
    allowed = np.broadcast_to(valid[:, None, :], (b, t, s))
    want = naive_attention(np.asarray(x), np.asarray(mem), *[np.asarray(p[n][k]) for n in "qkv" for k in "wb"],
                           np.asarray(p["out"]["w"]), np.asarray(p["out"]["b"]), h, allowed)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)
    assert np.allclose(np.asarray(probs)[0, :, :, 2:], 0.0)  # padded keys get no weight


@pytest.mark.parametrize("t,block", [(12, 4), (12, 6), (8, 8), (10, 4)])  # 3 and 2 blocks; one block; not a multiple
def test_causal_blocks_match_the_naive_loop_and_their_gradients_match_the_full_mask(t, block):
    """Query-blocked causal attention (the masked blocks above the diagonal are never
    computed) gives the naive loop's outputs and the full-mask version's gradients."""
    b, d, h = 2, 8, 2
    p = init_self_attention(jax.random.PRNGKey(5), d, fused=True, bias=True, n_layer=1)
    x = jax.random.normal(jax.random.PRNGKey(6), (b, t, d))
    y, _, _ = self_attention(p, x, n_head=h, mask=None, causal_block=block)
    w, bias = np.asarray(p["qkv"]["w"]), np.asarray(p["qkv"]["b"])
    parts = [(w[:, i * d:(i + 1) * d], bias[i * d:(i + 1) * d]) for i in range(3)]
    allowed = np.broadcast_to(np.tril(np.ones((t, t), bool)), (b, t, t))
    want = naive_attention(np.asarray(x), np.asarray(x), *parts[0], *parts[1], *parts[2],
                           np.asarray(p["out"]["w"]), np.asarray(p["out"]["b"]), h, allowed)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)

    def loss(p, x, **kw):
        return jnp.sum(jnp.sin(self_attention(p, x, n_head=h, **kw)[0]))
    g_block = jax.grad(loss, argnums=(0, 1))(p, x, mask=None, causal_block=block)
    g_full = jax.grad(loss, argnums=(0, 1))(p, x, mask=causal_mask(t))
    for a, c in zip(jax.tree.leaves(g_block), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["causal", "blocks", "many-blocks", "causal+padding"])
def test_attention_and_its_gradients_match_jax_nn_dot_product_attention(form):
    """The attention core (with the causal mask, in query blocks, in more blocks than
    MAX_QUERY_BLOCKS, with padding too) against JAX's own implementation,
    jax.nn.dot_product_attention (XLA's): the outputs and the gradients in q, k and v
    (benchmarks/attention_bench.py times the two)."""
    b, t, h, kw = 2, 64 if form == "many-blocks" else 12, 3, 8
    q, k_, v, g = (jax.random.normal(key, (b, t, h, kw)) for key in jax.random.split(jax.random.PRNGKey(7), 4))
    g = g.reshape(b, t, h * kw)
    mask = causal_mask(t)
    if form == "causal+padding":  # the second sequence's last 5 positions are padding
        mask = mask & padding_mask(jnp.arange(t)[None, :] < jnp.array([[t], [t - 5]]))

    def ours(q, k, v):
        if form in ("blocks", "many-blocks"):
            return attend_causal(q, k, v, block=4 if form == "blocks" else 2)  # 32 blocks asked for: 8 made
        return attend(q, k, v, mask)[0]

    def theirs(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla").reshape(b, t, h * kw)
    (y1, vjp1), (y2, vjp2) = jax.vjp(ours, q, k_, v), jax.vjp(theirs, q, k_, v)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y2), rtol=1e-5, atol=1e-5)
    for a, c in zip(vjp1(g), vjp2(g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-4, atol=1e-5)
