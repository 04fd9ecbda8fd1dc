"""AdamW, clipping and the decay mask against optax (an independent implementation)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scratchformer.optim.adamw import adamw_init, adamw_update, clip_by_global_norm, decay_mask, global_norm

from conftest import float64


def _tree(key):
    k = jax.random.split(key, 4)
    return {"embed": {"tokens": jax.random.normal(k[0], (7, 5))},
            "blocks": [{"w": jax.random.normal(k[1], (5, 3)), "b": jax.random.normal(k[2], (3,))}],
            "ln_f": {"scale": jax.random.normal(k[3], (5,))}}


def test_adamw_matches_optax_over_many_steps():
    # float64 so that the comparison sees the algorithm, not float32 rounding that the
    # parameter-dependent gradients below would amplify over 120 steps.
    with float64():
        _compare_with_optax()


def _compare_with_optax():
    params = jax.tree.map(lambda a: a.astype(jnp.float64), _tree(jax.random.PRNGKey(0)))
    mask = decay_mask(params)
    hp = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    lrs = np.linspace(1e-3, 3e-2, 120)
    ref = optax.adamw(learning_rate=lambda c: jnp.asarray(lrs)[c], mask=mask, **hp)
    ref_state = ref.init(params)
    ours, ref_params = adamw_init(params), params
    for i in range(120):
        g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)) + 0.1 * i * x, params)  # depends on params
        ref_g = jax.tree.map(lambda x: jnp.sin(x * (i + 1)) + 0.1 * i * x, ref_params)
        params, ours = adamw_update(g, ours, params, lr=float(lrs[i]), mask=mask, **hp)
        upd, ref_state = ref.update(ref_g, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, upd)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    assert int(ours.count) == 120


def test_decay_mask_rules():
    m = decay_mask(_tree(jax.random.PRNGKey(0)))
    assert m["blocks"][0]["w"] and not m["blocks"][0]["b"] and not m["ln_f"]["scale"]
    assert m["embed"]["tokens"]
    assert not decay_mask(_tree(jax.random.PRNGKey(0)), decay_embeddings=False)["embed"]["tokens"]


def test_masked_leaves_get_no_decay():
    """With zero gradients, only masked-in leaves move (they shrink by lr * wd * p)."""
    params = _tree(jax.random.PRNGKey(1))
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, _ = adamw_update(zeros, adamw_init(params), params, lr=0.1, b1=0.9, b2=0.99, eps=1e-8,
                          weight_decay=0.5, mask=decay_mask(params))
    np.testing.assert_allclose(new["blocks"][0]["w"], params["blocks"][0]["w"] * (1 - 0.05), rtol=1e-6)
    np.testing.assert_array_equal(new["blocks"][0]["b"], params["blocks"][0]["b"])


def test_clip_matches_optax():
    g = _tree(jax.random.PRNGKey(2))
    norm = float(global_norm(g))
    for max_norm in (norm / 3, norm * 2):
        ours, n = clip_by_global_norm(g, max_norm)
        ref, _ = optax.clip_by_global_norm(max_norm).update(g, None)
        assert np.isclose(float(n), float(optax.tree.norm(g)), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    # every leaf shape the norm is taken over in pieces: scalar, vector, matrix, 3-D
    leaves = [np.float32(3.0), np.arange(5.0, dtype=np.float32), np.ones((4, 6), np.float32),
              np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)]
    want = np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in leaves))
    assert np.isclose(float(global_norm([jnp.asarray(x) for x in leaves])), want, rtol=1e-6)
    same, _ = clip_by_global_norm(g, 0.0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(g)))
