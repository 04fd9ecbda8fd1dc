"""Muon and the Muon + AdamW hybrid against two independent implementations
(optax.contrib.muon, and the published Newton-Schulz iteration written out in numpy),
and their properties: singular values near 1, invariance to the gradient's scale, the
decay mask, AdamW on the other leaves, fused projections split into blocks. Polar
Express's coefficients and NorMuon against numpy written from their papers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scratchformer.config import ModelConfig
from scratchformer.models import init_encdec, init_lm
from scratchformer.optim.adamw import adamw_init, adamw_update
from scratchformer.optim.muon import (
    hybrid_init,
    hybrid_update,
    muon_init,
    muon_mask,
    muon_update,
    newton_schulz,
    newton_schulz_stack,
    orthogonalise_stacked,
    shape_factor,
)

from conftest import float64

CFG = ModelConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=8, vocab_size=11, tie_embeddings=False)
SHAPES = [(16, 16), (24, 64), (96, 32)]  # square, wide and tall


def _grad(tree, i):
    """A gradient that depends on the parameters and on the step."""
    return jax.tree.map(lambda x: jnp.sin(x * 37.0 * (i + 1)) + 0.1 * i * x, tree)


def _run(update, params, state, steps):
    """`steps` jitted steps of update(grads, state, params) -> (params, state) on _grad."""
    update = jax.jit(update)
    for i in range(steps):
        params, state = update(_grad(params, i), state, params)
    return params


def _optax_update(opt):
    def update(grads, state, params):
        upd, state = opt.update(grads, state, params)
        return optax.apply_updates(params, upd), state
    return update


def reference_zeropower(g, steps=5):
    """zeropower_via_newtonschulz5 of modded-nanogpt / KellerJordan/Muon, in float64 numpy."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = np.asarray(g, np.float64)
    if x.shape[-2] > x.shape[-1]:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return x.T if g.shape[-2] > g.shape[-1] else x


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_matches_the_published_iteration(shape):
    g = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
    ns = jax.jit(newton_schulz, static_argnames="dtype")
    np.testing.assert_allclose(ns(g), reference_zeropower(g), rtol=0, atol=2e-5)
    with float64():
        g64 = g.astype(jnp.float64)
        np.testing.assert_allclose(ns(g64, dtype=jnp.float64), reference_zeropower(g), rtol=0, atol=1e-12)


def test_singular_values_land_near_one():
    """NS is an odd matrix polynomial: it keeps g's singular vectors and maps each
    singular value s (over ||g||_F) to p(s). The quintic puts every s >= 2e-3 into
    [0.68, 1.21] (not 1: the coefficients trade exactness for a steep start). Random
    non-square matrices have no smaller s; square ones do (s_min ~ D^-3/2)."""
    for shape in SHAPES:
        g = np.asarray(jax.random.normal(jax.random.PRNGKey(1), shape), np.float64)
        u, s, vt = np.linalg.svd(g, full_matrices=False)
        in_basis = u.T @ np.asarray(newton_schulz(jnp.asarray(g, jnp.float32)), np.float64) @ vt.T
        d = np.diag(in_basis)
        assert np.linalg.norm(in_basis - np.diag(d)) < 1e-4 * np.linalg.norm(d)
        kept = s / np.linalg.norm(g) >= 2e-3
        assert kept.all() or shape[0] == shape[1]
        assert d[kept].min() > 0.68 and d[kept].max() < 1.21, (shape, d[kept].min(), d[kept].max())


def test_update_is_invariant_to_the_gradient_scale():
    """Up to NS's eps (1e-7 against momentum norms of about 0.1 here, times the scale)."""
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (24, 64))}
    grads = [{"w": jax.random.normal(jax.random.PRNGKey(i + 1), (24, 64))} for i in range(3)]
    step = jax.jit(lambda g, s, p: muon_update(g, s, p, lr=0.05))
    runs = []
    for scale in (1.0, 1e-2, 1e3):
        p, st = params, muon_init(params)
        for g in grads:
            p, st = step(jax.tree.map(lambda x: scale * x, g), st, p)
        runs.append(p["w"])
    assert np.isfinite(runs).all() and np.abs(runs[0] - params["w"]).max() > 0.02
    np.testing.assert_allclose(runs[1], runs[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(runs[2], runs[0], rtol=0, atol=1e-6)


def test_shape_factor_conventions():
    # d_in x d_out: the reference's max(1, d_out/d_in)**0.5, or Moonlight's s*sqrt(max(d_in, d_out))
    assert shape_factor(16, 64) == 2.0 and shape_factor(64, 16) == 1.0 and shape_factor(16, 16) == 1.0
    assert shape_factor(16, 64, rms_scale=0.2) == pytest.approx(0.2 * 8)


# ---------------------------------------------------------------- against optax
def _optax_dims(params, mask):
    """optax's per-leaf Muon spec: (reduction=0, output=1) on Muon leaves, None (AdamW) else."""
    dims = optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    return jax.tree.map(lambda m: dims if m else None, mask)


@pytest.mark.parametrize("rms_scale", [None, 0.2])
def test_hybrid_matches_optax_contrib_muon(rms_scale):
    """optax.contrib.muon configured as this module: nesterov off (optax's Nesterov
    bias-corrects m and g with different denominators, so from step 2 it is not the
    reference's; its plain momentum's bias correction is a scalar NS ignores), one eps
    for NS and AdamW, AdamW decaying every non-Muon leaf, separate projections (optax
    orthogonalises a fused qkv as one matrix)."""
    params = init_lm(jax.random.PRNGKey(0), ModelConfig(**{**CFG.__dict__, "fused_qkv": False}))
    mask = muon_mask(params)
    hp = dict(b1=0.9, b2=0.95, eps=1e-8)
    ref = optax.contrib.muon(0.02, adam_learning_rate=3e-3, nesterov=False, beta=0.95, eps=hp["eps"],
                             weight_decay=0.1, adam_weight_decay=0.1, adam_b1=hp["b1"], adam_b2=hp["b2"],
                             muon_weight_dimension_numbers=_optax_dims(params, mask), consistent_rms=rms_scale)
    ours = _run(lambda g, s, p: hybrid_update(g, s, p, muon_lr=0.02, adam_lr=3e-3, muon_mask=mask, weight_decay=0.1,
                                              nesterov=False, ns_eps=hp["eps"], rms_scale=rms_scale, **hp),
                params, hybrid_init(params, mask), 4)
    theirs = _run(_optax_update(ref), params, ref.init(params), 4)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
    moved = ours["blocks"][0]["mlp"]["fc"]["w"] - params["blocks"][0]["mlp"]["fc"]["w"]
    assert np.abs(moved).max() > 1e-2  # the comparison is of steps that did something


def test_nesterov_matches_optax_trace_then_muon():
    """Nesterov momentum as the reference has it (u = beta m + (1-beta) g, m an EMA), built
    from optax's own pieces: trace(nesterov) gives (1-beta)^-1 u, then optax's Muon with
    beta = 0 orthogonalises it (NS ignores the scale)."""
    params = {"blocks": [{"w": jax.random.normal(jax.random.PRNGKey(i), s)} for i, s in enumerate(SHAPES)]}
    ref = optax.chain(optax.trace(decay=0.95, nesterov=True),
                      optax.contrib.muon(0.02, beta=0.0, nesterov=False, eps=1e-7, weight_decay=0.1))
    ours = _run(lambda g, s, p: muon_update(g, s, p, lr=0.02, weight_decay=0.1), params, muon_init(params), 4)
    theirs = _run(_optax_update(ref), params, ref.init(params), 4)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


# ---------------------------------------------------------------- masks and the hybrid
def test_muon_mask_takes_the_hidden_matrices_only():
    for params in (init_lm(jax.random.PRNGKey(0), CFG), init_encdec(jax.random.PRNGKey(0), CFG)):
        flat = jax.tree_util.tree_flatten_with_path(muon_mask(params))[0]
        names = {jax.tree_util.keystr(p): m for p, m in flat}
        chosen = {n for n, m in names.items() if m}
        assert chosen and all("['blocks']" in n and n.endswith("['w']") for n in chosen)
        assert not any(m for n, m in names.items() if "embed" in n or "head" in n or n.endswith("['b']"))
        leaves = dict(zip(names, jax.tree.leaves(params)))
        assert chosen == {n for n, x in leaves.items() if x.ndim == 2 and "['blocks']" in n}
    assert "['decoder']['blocks'][0]['cross']['kv']['w']" in chosen
    # A Llama-architecture block: separate q, k, v (k and v narrower: 1 key/value head), gate/up/down.
    llama = ModelConfig(**{**CFG.__dict__, "fused_qkv": False, "n_kv_head": 1, "activation": "swiglu", "bias": False})
    chosen = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_flatten_with_path(
        muon_mask(init_lm(jax.random.PRNGKey(0), llama)))[0] if m}
    assert chosen == {f"['blocks'][0]['{part}']['{name}']['w']" for part, names in
                      (("attn", ("q", "k", "v", "out")), ("mlp", ("gate", "up", "down"))) for name in names}


def test_weight_decay_only_where_masked():
    """Zero gradients: NS(0) = 0, so a leaf moves only by its decay, lr * wd * p."""
    params = init_lm(jax.random.PRNGKey(0), CFG)
    mask = muon_mask(params)
    decay = jax.tree.map(lambda x: x.ndim == 2, params)
    decay["blocks"][0]["mlp"]["proj"]["w"] = False
    zeros = jax.tree.map(jnp.zeros_like, params)
    step = jax.jit(lambda g, s, p: hybrid_update(g, s, p, muon_lr=0.1, adam_lr=0.01, muon_mask=mask,
                                                 decay_mask=decay, weight_decay=0.5, b1=0.9, b2=0.95, eps=1e-8))
    new, _ = step(zeros, hybrid_init(params, mask), params)
    lr = jax.tree.map(lambda m: 0.1 if m else 0.01, mask)
    expect = jax.tree.map(lambda p, d, r: p * (1 - r * 0.5) if d else p, params, decay, lr)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expect)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(new["blocks"][0]["mlp"]["proj"]["w"], params["blocks"][0]["mlp"]["proj"]["w"])


def test_hybrid_is_adamw_and_muon_side_by_side():
    """Every non-Muon leaf is exactly what adamw_update alone gives on the whole tree, and
    every Muon leaf what muon_update alone gives on the Muon leaves; under jit (the masks
    are static)."""
    params = init_lm(jax.random.PRNGKey(0), CFG)
    mask, hp = muon_mask(params), dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    only_muon = jax.tree.map(lambda x, m: x if m else None, params, mask)
    hyb = _run(lambda g, s, p: hybrid_update(g, s, p, muon_lr=0.02, adam_lr=3e-3, muon_mask=mask, **hp),
               params, hybrid_init(params, mask), 3)
    adam = _run(lambda g, s, p: adamw_update(g, s, p, lr=3e-3, **hp), params, adamw_init(params), 3)
    muon = _run(lambda g, s, p: muon_update(g, s, p, lr=0.02, weight_decay=0.1), only_muon, muon_init(only_muon), 3)
    muon = jax.tree.map(lambda m, x: x if m else None, mask, muon)
    jax.tree.map(lambda is_muon, h, a, m: np.testing.assert_array_equal(h, m if is_muon else a), mask, hyb, adam, muon)
    state = hybrid_init(params, mask)
    assert len(jax.tree.leaves(state.muon.mu)) == sum(jax.tree.leaves(mask))
    assert len(jax.tree.leaves(state.adam.nu)) == len(jax.tree.leaves(mask)) - sum(jax.tree.leaves(mask))


def test_fused_qkv_is_orthogonalised_as_three_blocks():
    """A fused D x 3D qkv step equals the separate q, k, v steps side by side (not the
    whole matrix's NS, whose shape factor would also be sqrt(3))."""
    d = 16
    w = jax.random.normal(jax.random.PRNGKey(0), (d, 3 * d))
    g = jax.random.normal(jax.random.PRNGKey(1), (d, 3 * d))
    fused = {"blocks": [{"attn": {"qkv": {"w": w}}}]}
    split = {"blocks": [{"attn": {n: {"w": x} for n, x in zip("qkv", jnp.split(w, 3, axis=1))}}]}
    step = lambda tree, grad: muon_update(grad, muon_init(tree), tree, lr=0.1)[0]
    new_fused = step(fused, {"blocks": [{"attn": {"qkv": {"w": g}}}]})["blocks"][0]["attn"]["qkv"]["w"]
    grads = {"blocks": [{"attn": {n: {"w": x} for n, x in zip("qkv", jnp.split(g, 3, axis=1))}}]}
    new_split = step(split, grads)["blocks"][0]["attn"]
    np.testing.assert_allclose(new_fused, jnp.concatenate([new_split[n]["w"] for n in "qkv"], axis=1), atol=1e-7)
    whole = w - 0.1 * 3 ** 0.5 * newton_schulz(g)
    assert np.abs(new_fused - whole).max() > 1e-2


def _muon_leaves(dtype=jnp.float32):
    params = jax.tree.map(lambda x: x.astype(dtype), init_lm(jax.random.PRNGKey(0), CFG))
    mask = muon_mask(params)
    p_m = jax.tree.map(lambda x, m: x if m else None, params, mask)
    g_m = jax.tree.map(lambda x, m: x if m else None, _grad(params, 0), mask)
    return p_m, g_m


def _per_block(g, path, **ns):
    """newton_schulz of each of the leaf's blocks, scaled, side by side."""
    blocks = 3 if "qkv" in jax.tree_util.keystr(path) else 1
    return np.concatenate([shape_factor(*b.shape) * np.asarray(newton_schulz(jnp.asarray(b), **ns))
                           for b in np.split(np.asarray(g), blocks, axis=1)], axis=1)


def test_stacked_newton_schulz_is_the_iteration_per_block():
    """The batched iteration (products given): on a model's leaves (fused qkv, square,
    wide, tall), in float64, each update is its blocks' newton_schulz, transposed back
    and scaled."""
    with float64():
        p_m, g_m = _muon_leaves(jnp.float64)
        new, _ = muon_update(g_m, muon_init(p_m), p_m, lr=1.0, momentum=0.0, products=jnp.float64)
        leaves = list(zip(jax.tree_util.tree_leaves_with_path(g_m), jax.tree.leaves(new), jax.tree.leaves(p_m)))
        assert len(leaves) == 4  # qkv (fused, 3 blocks), out, fc (wide), proj (tall)
        for (path, g), n, p in leaves:
            np.testing.assert_allclose(np.asarray(p - n), _per_block(g, path, dtype=jnp.float64), rtol=0, atol=1e-10)


def test_stacked_newton_schulz_in_bfloat16_products_beats_the_bfloat16_iteration():
    """model.products=bfloat16 (X in float32, products from bfloat16 inputs): each
    update is closer to the float32 iteration than the published all-bfloat16 one (the
    reference's dtype on a GPU) is."""
    p_m, g_m = _muon_leaves()
    new, _ = jax.jit(lambda g, s, p: muon_update(g, s, p, lr=1.0, momentum=0.0, products=jnp.bfloat16))(
        g_m, muon_init(p_m), p_m)
    for (path, g), n, p in zip(jax.tree_util.tree_leaves_with_path(g_m), jax.tree.leaves(new), jax.tree.leaves(p_m)):
        step, exact = np.asarray(p - n, np.float64), _per_block(g, path)
        bf16 = _per_block(g, path, dtype=jnp.bfloat16)
        assert 0 < np.linalg.norm(step - exact) < 0.7 * np.linalg.norm(bf16 - exact)


def test_a_lone_tall_matrix_orthogonalises_in_bfloat16_products():
    """A matrix of a shape no other has, taller than wide and as large as a preset's (a
    multi-token prediction module's 2D x D projection):
    XLA's CPU backend once folded its transpose into a bfloat16 product it cannot run.
    The update is the float32 iteration's, to bfloat16's rounding."""
    u = jax.random.normal(jax.random.PRNGKey(0), (192, 96))
    got = jax.jit(lambda u: orthogonalise_stacked([u], [1], products=jnp.bfloat16))(u)[0]
    want = shape_factor(192, 96) * np.asarray(newton_schulz(u.T, dtype=jnp.float32)).T
    assert np.linalg.norm(np.asarray(got) - want) < 0.05 * np.linalg.norm(want)


# ---------------------------------------------------------------- Polar Express and NorMuon
# modded-nanogpt's train_gpt.py, polar_express_coeffs (Amsel et al. 2025, arXiv:2505.16932;
# num_iters=5, safety_factor=2e-2, cushion=2), copied here so that the module's are checked.
PE_COEFFS = [(8.156554524902461, -22.48329292557795, 15.878769915207462),
             (4.042929935166739, -2.808917465908714, 0.5000178451051316),
             (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
             (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
             (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)]


def reference_polar_express(g):
    """X_0 = G / (||G||_F (1 + 2e-2) + 1e-6), X_{k+1} = a_k X + b_k (X X^T) X + c_k (X X^T)^2 X,
    on the wide orientation, in float64 numpy."""
    x = np.asarray(g, np.float64)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) * (1 + 2e-2) + 1e-6)
    for a, b, c in PE_COEFFS:
        m = x @ x.T
        x = a * x + b * m @ x + c * m @ m @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_express_matches_the_published_iteration(shape):
    g = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
    ns = jax.jit(newton_schulz, static_argnames=("dtype", "coeffs"))
    np.testing.assert_allclose(ns(g, coeffs="polar_express"), reference_polar_express(g), rtol=0, atol=2e-5)
    with float64():
        g64 = g.astype(jnp.float64)
        got = ns(g64, dtype=jnp.float64, coeffs="polar_express")
        np.testing.assert_allclose(got, reference_polar_express(g), rtol=0, atol=1e-12)
        wide = g64.T if shape[0] > shape[1] else g64  # the stacked path takes wide matrices only
        stacked = newton_schulz_stack(jnp.stack([wide, -wide[::-1]]), products=jnp.float64, coeffs="polar_express")
        np.testing.assert_allclose(stacked[0], reference_polar_express(wide), rtol=0, atol=1e-12)
        np.testing.assert_allclose(stacked[1], -reference_polar_express(wide[::-1]), rtol=0, atol=1e-12)


def test_polar_express_lands_closer_to_one_than_jordan():
    """The singular values of NS(g) for a random 64 x 32 g: Polar Express's per-step
    quintics put them within about 0.14 of 1, the one fixed quintic only within about 0.32."""
    g = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (64, 32)), np.float64)
    off = {c: np.abs(np.linalg.svd(np.asarray(newton_schulz(jnp.asarray(g, jnp.float32), coeffs=c), np.float64),
                                   compute_uv=False) - 1).max() for c in ("jordan", "polar_express")}
    assert off["polar_express"] < 0.6 * off["jordan"], off


def reference_normuon(params, grads, *, lr, beta, beta2, zeropower):
    """Muon with NorMuon (Li et al. 2025, Algorithm 1, with modded-nanogpt's rescale to
    the orthogonalised update's norm) over steps of `grads`, float64 numpy, one matrix per
    block (a fused qkv: three). y = x @ w, so a neuron is a column of w. Returns (params,
    second moments)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros(x.shape[1]) for k, x in p.items()}
    for g in grads:
        for k in p:
            n = 3 if "qkv" in k else 1
            gk = np.asarray(g[k], np.float64)
            m[k] = beta * m[k] + (1 - beta) * gk
            o = np.concatenate([zeropower(b) for b in np.split(beta * m[k] + (1 - beta) * gk, n, axis=1)], axis=1)
            v[k] = beta2 * v[k] + (1 - beta2) * np.mean(o ** 2, axis=0)
            steps = []
            for ob, vb in zip(np.split(o, n, axis=1), np.split(v[k], n)):
                hat = ob / np.sqrt(vb)
                hat *= np.linalg.norm(ob) / np.linalg.norm(hat)
                steps.append(max(1, ob.shape[1] / ob.shape[0]) ** 0.5 * hat)
            p[k] = p[k] - lr * np.concatenate(steps, axis=1)
    return p, v


@pytest.mark.parametrize("coeffs", ["jordan", "polar_express"])
@pytest.mark.parametrize("products", [None, jnp.float64], ids=["per-matrix", "stacked"])
def test_normuon_two_steps_match_the_paper(coeffs, products):
    """Two steps (the second moment's EMA then matters) on a model's leaves: the fused qkv
    (three blocks), out (square), fc (wide), proj (tall), in float64."""
    zeropower = {"jordan": reference_zeropower, "polar_express": reference_polar_express}[coeffs]
    with float64():
        p_m, _ = _muon_leaves(jnp.float64)
        grads = [_grad(p_m, i) for i in range(2)]
        state, params = muon_init(p_m, normuon=True), p_m
        for g in grads:
            params, state = muon_update(g, state, params, lr=0.1, momentum=0.9, ns_dtype=jnp.float64,
                                        products=products, ns_coeffs=coeffs, normuon_beta2=0.8)
        flat = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(p_m)}
        flat_g = [{jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(g)} for g in grads]
        want_p, want_v = reference_normuon(flat, flat_g, lr=0.1, beta=0.9, beta2=0.8, zeropower=zeropower)
        got_p = dict(zip(flat, jax.tree.leaves(params)))
        got_v = dict(zip(flat, jax.tree.leaves(state.nu)))
        assert len(got_p) == 4 and all(got_v[k].shape == (x.shape[1],) for k, x in got_p.items())
        for k in flat:
            np.testing.assert_allclose(got_v[k], want_v[k], rtol=1e-9, atol=0)
            np.testing.assert_allclose(got_p[k], want_p[k], rtol=0, atol=1e-10)
            assert np.abs(got_p[k] - flat[k]).max() > 1e-2


def test_normuon_evens_out_the_neurons_not_the_inputs():
    """At the first step nu = (1-beta2) mean_i o_ij^2, so every column (neuron: y = x @ w)
    of the update gets the same norm, and the rows do not; the whole update keeps plain
    Muon's norm."""
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (24, 64))}
    g = {"w": jax.random.normal(jax.random.PRNGKey(1), (24, 64)) * jnp.linspace(0.1, 3.0, 64)}
    step = lambda **kw: (params["w"] - muon_update(g, muon_init(params, normuon=True), params, lr=1.0,
                                                   momentum=0.0, **kw)[0]["w"])
    normed, plain = np.asarray(step(normuon_beta2=0.5), np.float64), np.asarray(step(), np.float64)
    cols, rows = np.linalg.norm(normed, axis=0), np.linalg.norm(normed, axis=1)
    np.testing.assert_allclose(cols, cols.mean(), rtol=1e-4)
    assert rows.std() > 10 * cols.std()
    plain_cols = np.linalg.norm(plain, axis=0)
    assert plain_cols.std() > 0.1 * plain_cols.mean()  # there was something to even out
    np.testing.assert_allclose(np.linalg.norm(normed), np.linalg.norm(plain), rtol=1e-5)


def _muon_before(grads, state, params, *, lr, momentum=0.95, weight_decay=0.0):
    """muon_update's default step as it was written before the coefficient sets and NorMuon
    (per matrix, fused qkv in three blocks): the defaults must still trace to this program."""
    def ns(g):
        x = g.astype(jnp.float32)
        tall = x.shape[0] > x.shape[1]
        x = x.T if tall else x
        x = (x / (jnp.linalg.norm(x) + 1e-7)).astype(jnp.float32)
        for _ in range(5):
            a = x @ x.T
            x = 3.4445 * x + (-4.7750 * a + 2.0315 * (a @ a)) @ x
        return (x.T if tall else x).astype(g.dtype)

    mu = jax.tree.map(lambda m, g: momentum * m + (1 - momentum) * g, state.mu, grads)
    us = jax.tree.map(lambda m, g: momentum * m + (1 - momentum) * g, mu, grads)
    upd = jax.tree_util.tree_map_with_path(lambda path, u: jnp.concatenate(
        [shape_factor(*b.shape) * ns(b) for b in jnp.split(u, 3 if "qkv" in jax.tree_util.keystr(path) else 1,
                                                               axis=1)], axis=1), us)
    return jax.tree.map(lambda p, o: p - lr * (o + weight_decay * p), params, upd)


def test_defaults_are_the_step_from_before_the_variants():
    """ns_coeffs="jordan" and normuon_beta2=0 (the config's defaults) give the earlier
    program's numbers bit for bit, and a state without second-moment leaves (the
    checkpoint names of earlier Muon runs)."""
    p_m, g_m = _muon_leaves()
    state = muon_init(p_m)
    assert state.nu is None and len(jax.tree.leaves(state)) == 1 + len(jax.tree.leaves(p_m))
    new, st = jax.jit(lambda g, s, p: muon_update(g, s, p, lr=0.1, weight_decay=0.2))(g_m, state, p_m)
    old = jax.jit(lambda g, s, p: _muon_before(g, s, p, lr=0.1, weight_decay=0.2))(g_m, state, p_m)
    jax.tree.map(np.testing.assert_array_equal, new, old)
    assert st.nu is None
    with pytest.raises(ValueError, match="muon_init\\(params, normuon=True\\)"):
        muon_update(g_m, state, p_m, lr=0.1, normuon_beta2=0.9)
