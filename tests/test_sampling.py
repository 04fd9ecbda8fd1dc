"""LM sampling: the KV cache changes nothing, sliding windows past the block size,
top-k and top-p do what they say, token i's noise comes from fold_in(key, i)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer.config import ModelConfig
from scratchformer import decode
from scratchformer.decode import _generate, cache_sizes, filter_logits, generate, sample_token
from scratchformer.models import init_lm, lm_forward

from conftest import latest_first_draw

CFG = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=8, vocab_size=13)


@pytest.fixture(scope="module")
def params():
    # Larger-than-default weights so that the distribution is far from uniform.
    p = init_lm(jax.random.PRNGKey(0), CFG)
    return jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, p)


@pytest.mark.parametrize("prompt_len,n_new", [(1, 30), (5, 4), (12, 20)])  # past the block size (8)
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (0.8, 0, 1.0), (1.0, 5, 0.9)])
def test_cached_equals_uncached(params, prompt_len, n_new, temperature, top_k, top_p):
    prompt = np.arange(prompt_len) % 13
    kw = dict(seed=3, temperature=temperature, top_k=top_k, top_p=top_p)
    a = generate(params, CFG, prompt, n_new, use_cache=True, **kw)
    b = generate(params, CFG, prompt, n_new, use_cache=False, **kw)
    np.testing.assert_array_equal(a, b)
    assert len(a) == prompt_len + n_new and (a[:prompt_len] == prompt).all()


@pytest.mark.parametrize("prompt_len,n_new", [(1, 30), (5, 4), (12, 20), (1, 200)])
@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_a_stop_id_cuts_the_sample_after_its_first_draw(params, prompt_len, n_new, use_cache):
    """generate(stop=id) is the sample without a stop cut after that id's first draw
    (token i's noise is its own): stopped at the first token, at the id drawn first the
    latest (past the block size of 8 that is after re-prefills; 200 tokens end in a
    period of their own), or never, for an id that is not drawn."""
    prompt = np.arange(prompt_len) % 13
    kw = dict(seed=3, temperature=1.0, use_cache=use_cache)
    whole = generate(params, CFG, prompt, n_new, **kw)
    latest, at = latest_first_draw(whole, prompt_len)
    if n_new > 12:
        assert at > prompt_len + CFG.block_size  # the stop comes after the window slid
    for stop, first in ((int(whole[prompt_len]), prompt_len), (latest, at)):
        np.testing.assert_array_equal(generate(params, CFG, prompt, n_new, stop=stop, **kw), whole[: first + 1])
    undrawn = sorted(set(range(13)) - set(whole[prompt_len:].tolist()))
    if undrawn:
        np.testing.assert_array_equal(generate(params, CFG, prompt, n_new, stop=undrawn[0], **kw), whole)


def test_decoding_weights_made_once_give_the_same_tokens(params):
    """A layout made by decoding_weights and passed to several calls samples what each
    call's own conversion does, and it is the transposed layout (not the training one)."""
    layout = decode.decoding_weights(params)
    assert any("w_t" in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(layout))
    for prompt, seed in (([1, 2, 3], 0), ([4], 5)):
        a = generate(params, CFG, prompt, 20, seed=seed, layout=layout)
        np.testing.assert_array_equal(a, generate(params, CFG, prompt, 20, seed=seed))
    # and ignored without the cache, which has no one-token steps
    np.testing.assert_array_equal(generate(params, CFG, [1, 2], 10, use_cache=False, layout=layout),
                                  generate(params, CFG, [1, 2], 10, use_cache=False))


@pytest.mark.parametrize("n_filled,n_steps", [(1, 0), (1, 5), (3, 300), (255, 1), (256, 1), (257, 10),
                                              (1, 8191), (5000, 3192), (8192, 0)])
def test_cache_sizes_hold_the_prefill_and_every_step(n_filled, n_steps):
    """The first size holds the prefill, each size is GROWTH times the one before (or
    the last), the last is exactly the slots the steps write, and past the first no
    step reads more than GROWTH times the slots it needs."""
    sizes = cache_sizes(n_filled, n_steps)
    assert sizes[0] >= n_filled and sizes[-1] == n_filled + n_steps and sizes == sorted(set(sizes))
    assert all(b == a * decode.CACHE_GROWTH for a, b in zip(sizes, sizes[1:-1]))
    for i in range(0, n_steps, 97):  # step i writes slot n_filled + i and reads the size it runs at
        size = next(s for s in sizes if s > n_filled + i)
        assert size == sizes[0] or size <= decode.CACHE_GROWTH * (n_filled + i + 1)


@pytest.mark.parametrize("prompt_len,n_new", [(1, 30), (3, 5), (1, 4), (12, 20)])
def test_a_growing_cache_changes_nothing(params, prompt_len, n_new, monkeypatch):
    """With a first size of 2 slots growing 2x, the cache grows (2, 4, 8) before the
    window (8) slides, or stops short of the block (1 + 4 tokens): the same tokens as
    without a cache."""
    monkeypatch.setattr(decode, "CACHE_SLOTS", 2)
    monkeypatch.setattr(decode, "CACHE_GROWTH", 2)
    assert len(cache_sizes(1, 7)) == 3
    jax.clear_caches()  # _generate's compiled loops were laid out with the sizes before
    try:
        prompt = np.arange(prompt_len) % 13
        for kw in (dict(temperature=0.0), dict(temperature=0.8, top_k=5)):
            np.testing.assert_array_equal(generate(params, CFG, prompt, n_new, seed=3, **kw),
                                          generate(params, CFG, prompt, n_new, seed=3, use_cache=False, **kw))
    finally:
        jax.clear_caches()


@pytest.mark.parametrize("prompt_len,n_new", [(1, 30), (12, 20)])
def test_cached_equals_uncached_with_rotary_positions(prompt_len, n_new):
    """With rotary positions the cache holds keys rotated at their slots; the sliding
    window's re-prefill rotates them afresh from position 0, as the uncached pass does."""
    cfg = dataclasses.replace(CFG, positions="rope")
    p = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, init_lm(jax.random.PRNGKey(0), cfg))
    prompt = np.arange(prompt_len) % 13
    for temperature in (0.0, 0.8):
        np.testing.assert_array_equal(generate(p, cfg, prompt, n_new, seed=3, temperature=temperature),
                                      generate(p, cfg, prompt, n_new, seed=3, temperature=temperature,
                                               use_cache=False))


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cached_equals_uncached_with_the_block_options(positions):
    """RMSNorm, QK-norm (the cache holds normalised keys), ReLU squared, an untied head
    soft-capped at 1 (these logits are about 1 in size, so the cap bends them), and
    zero_init, which sets only the start: the weights are drawn without it (scaled as
    the fixture's) so that every block does something."""
    cfg = dataclasses.replace(CFG, positions=positions, norm="rmsnorm", qk_norm=True, activation="relu2",
                              logit_softcap=1.0, tie_embeddings=False, zero_init=True)
    p = init_lm(jax.random.PRNGKey(0), dataclasses.replace(cfg, zero_init=False))
    p = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, p)
    for prompt_len, n_new in [(1, 30), (12, 20)]:  # from the first token; from past the block size
        prompt = np.arange(prompt_len) % 13
        a = generate(p, cfg, prompt, n_new, seed=3, temperature=0.8)
        np.testing.assert_array_equal(a, generate(p, cfg, prompt, n_new, seed=3, temperature=0.8, use_cache=False))
        assert len(set(a[prompt_len:].tolist())) > 1  # not one token over and over


@pytest.mark.parametrize("n_kv_head", [2, 1])
def test_cached_equals_uncached_with_grouped_query_attention(n_kv_head):
    """4 query heads over 2 or 1 key/value heads, as in a Llama-architecture model
    (SwiGLU, rotary positions, no biases but q, k and v's): the cache holds the key/value
    heads only and gives the tokens of the uncached sampler, which repeats them."""
    cfg = dataclasses.replace(CFG, n_head=4, n_kv_head=n_kv_head, fused_qkv=False, positions="rope",
                              activation="swiglu", norm="rmsnorm", bias=False, qkv_bias=True, tie_embeddings=False)
    p = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, init_lm(jax.random.PRNGKey(0), cfg))
    for prompt_len, n_new in [(1, 30), (12, 20)]:  # from the first token; from past the block size
        prompt = np.arange(prompt_len) % 13
        a = generate(p, cfg, prompt, n_new, seed=3, temperature=0.8)
        np.testing.assert_array_equal(a, generate(p, cfg, prompt, n_new, seed=3, temperature=0.8, use_cache=False))
        assert len(set(a[prompt_len:].tolist())) > 1


def test_cached_equals_uncached_with_the_lm_options():
    """Value embeddings (looked up for the new token only), U-net skips (kept within one
    step's layers) and head-wise gates (fed by the new token's normed input) give the
    uncached sampler's tokens; the gates and gains are moved off their start."""
    cfg = dataclasses.replace(CFG, n_layer=3, value_embed=True, unet_skips=True, attn_gate=True)
    p = init_lm(jax.random.PRNGKey(0), cfg)
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    p = jax.tree.unflatten(tree, [a * 4.0 + 0.5 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    for prompt_len, n_new in [(1, 30), (12, 20)]:
        prompt = np.arange(prompt_len) % 13
        a = generate(p, cfg, prompt, n_new, seed=3, temperature=0.8)
        np.testing.assert_array_equal(a, generate(p, cfg, prompt, n_new, seed=3, temperature=0.8, use_cache=False))
        assert len(set(a[prompt_len:].tolist())) > 1


def test_bigram_embedding_cached_equals_uncached_and_starts_as_the_model_without():
    """model.bigram_embed: each cached step pairs its token with the one before it (in the
    window: a step never starts one), every prefill and the uncached window start from the
    "no previous symbol" row, so both samplers give the same tokens, past the block size
    too. Its table starts at zero, where the logits are those of the model without it."""
    cfg = dataclasses.replace(CFG, bigram_embed=True)
    p0 = init_lm(jax.random.PRNGKey(0), cfg)
    ids = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6]])
    base = {**p0, "embed": {k: v for k, v in p0["embed"].items() if k != "bigrams"}}
    np.testing.assert_array_equal(lm_forward(p0, ids, cfg=cfg)[0], lm_forward(base, ids, cfg=CFG)[0])
    p = {**p0, "embed": {**p0["embed"], "bigrams": jax.random.normal(jax.random.PRNGKey(1), p0["embed"]["bigrams"].shape)}}
    for prompt_len, n_new in [(1, 30), (12, 20)]:
        prompt = np.arange(prompt_len) % 13
        a = generate(p, cfg, prompt, n_new, seed=3, temperature=0.8)
        np.testing.assert_array_equal(a, generate(p, cfg, prompt, n_new, seed=3, temperature=0.8, use_cache=False))
        assert len(set(a[prompt_len:].tolist())) > 1
    # the pair table matters: the same weights without it sample other tokens
    assert (generate(p, cfg, [1], 30, seed=3) != generate(base, CFG, [1], 30, seed=3)).any()


def test_greedy_matches_a_naive_loop(params):
    """Greedy generation = argmax of a plain forward over the sliding window each step."""
    prompt, n_new, t, keep = [1, 2, 3], 15, CFG.block_size, CFG.block_size // 2
    out = generate(params, CFG, prompt, n_new, temperature=0.0)
    seq, s = list(prompt), 0
    for _ in range(n_new):
        window = jnp.asarray(seq[s:])[None]
        logits, _ = lm_forward(params, window, cfg=CFG)
        seq.append(int(jnp.argmax(logits[0, -1])))
        if len(seq) - s > t:
            s = len(seq) - keep
    assert out.tolist() == seq


def test_same_seed_same_text_other_seed_other_text(params):
    a = generate(params, CFG, [0], 40, seed=1)
    assert np.array_equal(a, generate(params, CFG, [0], 40, seed=1))
    assert not np.array_equal(a, generate(params, CFG, [0], 40, seed=2))


def test_top_k_one_is_greedy(params):
    np.testing.assert_array_equal(generate(params, CFG, [4], 25, temperature=0.9, top_k=1, seed=5),
                                  generate(params, CFG, [4], 25, temperature=0.0))


def test_top_p_keeps_smallest_set_reaching_p():
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    logits = jnp.log(jnp.asarray(probs))
    for p, want in [(0.35, {1}), (0.39, {1}), (0.41, {1, 3}), (0.69, {1, 3}), (0.71, {1, 3, 4}), (1.0, {0, 1, 2, 3, 4})]:
        kept = set(np.flatnonzero(np.isfinite(np.asarray(filter_logits(logits, temperature=1.0, top_p=p)))).tolist())
        assert kept == want, (p, kept)


def test_top_k_keeps_k_largest():
    logits = jnp.asarray([0.1, 3.0, -1.0, 2.0, 0.5])
    kept = np.isfinite(np.asarray(filter_logits(logits, temperature=1.0, top_k=2)))
    assert kept.tolist() == [False, True, False, True, False]


def naive_filter(logits, temperature, top_k, top_p):
    """filter_logits's rule, written out with numpy: the float32 logits / temperature, then
    -inf outside the k largest, then outside the fewest most likely tokens (the most
    likely first) whose probability reaches p."""
    z = np.asarray(logits, np.float32) / np.float32(temperature)
    if top_k:
        z[np.argsort(z, kind="stable")[:-top_k]] = -np.inf
    if top_p < 1.0:
        probs = np.exp(z.astype(np.float64) - z.max())
        probs /= probs.sum()
        mass, keep = 0.0, np.zeros(len(z), bool)
        for j in np.argsort(-probs, kind="stable"):
            if mass >= top_p:
                break
            keep[j], mass = True, mass + probs[j]
        z[~keep] = -np.inf
    return z


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8)])
def test_sampled_frequencies_follow_the_softmax(temperature, top_k, top_p):
    """Tokens 0..n-1 of one seed's stream against the distribution they should follow:
    softmax of the filtered logits (200,000 draws; 5 standard errors)."""
    logits = jnp.asarray([0.3, -1.0, 1.2, 0.0, -0.4, 2.0])
    n = 200_000
    draw = lambda i: sample_token(jax.random.PRNGKey(7), i, logits, temperature=temperature, top_k=top_k, top_p=top_p)
    draws = jax.jit(jax.vmap(draw))(jnp.arange(n))
    freq = np.bincount(np.asarray(draws), minlength=6) / n
    z = naive_filter(logits, temperature, top_k, top_p).astype(np.float64)
    want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(freq, want, atol=5 * np.sqrt(0.25 / n))


@pytest.mark.parametrize("v", [13, 50_257])  # 50,257 (GPT-2's) is an odd width, padded inside
def test_token_i_is_the_gumbel_max_under_its_own_key(v):
    """Token i is the argmax of logits + jax.random.gumbel(fold_in(key, i), (V,))."""
    key = jax.random.PRNGKey(4)
    logits = jax.random.normal(jax.random.PRNGKey(5), (v,)) * 3.0
    draw = jax.jit(lambda i: sample_token(key, i, logits, temperature=1.0, top_k=0, top_p=1.0))
    for i in (0, 1, 2, 5, 1000, 2**31 - 1):
        want = np.argmax(np.asarray(logits) + np.asarray(jax.random.gumbel(jax.random.fold_in(key, i), (v,))))
        assert int(draw(jnp.int32(i))) == int(want), i


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.8, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.9)])
def test_sampling_matches_a_naive_loop(params, temperature, top_k, top_p):
    """The whole sample against its definition, computed a token at a time in Python: a
    plain forward over the sliding window, the filter (naive_filter), and token i the
    argmax of that plus jax.random.gumbel(fold_in(key(seed), i), (V,)). Past the block size."""
    prompt, n_new, seed, t, keep = [1, 2, 3], 20, 6, CFG.block_size, CFG.block_size // 2
    key = jax.random.PRNGKey(seed)
    seq, s = list(prompt), 0
    for i in range(n_new):
        logits, _ = lm_forward(params, jnp.asarray(seq[s:])[None], cfg=CFG)
        z = naive_filter(logits[0, -1], temperature, top_k, top_p)
        seq.append(int(np.argmax(z + np.asarray(jax.random.gumbel(jax.random.fold_in(key, i), (CFG.vocab_size,))))))
        if len(seq) - s > t:
            s = len(seq) - keep
    for use_cache in (True, False):
        out = generate(params, CFG, prompt, n_new, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                       use_cache=use_cache)
        assert out.tolist() == seq, use_cache


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_longer_sample_begins_with_the_shorter(params, use_cache):
    """Token i's noise depends on the seed and i, not on how many tokens are asked for:
    50 tokens are the first 50 of 80 (past the block size: the window slides)."""
    kw = dict(seed=9, temperature=1.0, use_cache=use_cache)
    short, long = generate(params, CFG, [2, 7], 50, **kw), generate(params, CFG, [2, 7], 80, **kw)
    np.testing.assert_array_equal(short, long[:52])


def test_compiled_sampler_memory_does_not_grow_with_tokens_times_vocabulary():
    """XLA's temporaries for 2,000 new tokens against 100, at V = 5,000: the ids grow (a few
    int32 per token), the noise must not (a block of it would be 20,000 bytes per token)."""
    cfg = dataclasses.replace(CFG, vocab_size=5000)
    p = init_lm(jax.random.PRNGKey(0), cfg)
    key = jax.random.PRNGKey(0)

    def temp_bytes(n_new, use_cache):
        tokens = jax.ShapeDtypeStruct((1 + n_new,), jnp.int32)
        compiled = _generate.lower(p, tokens, key, cfg=cfg, n_prompt=1, n_new=n_new, temperature=0.8, top_k=0,
                                   top_p=1.0, use_cache=use_cache).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    for use_cache in (True, False):
        grown = temp_bytes(2000, use_cache) - temp_bytes(100, use_cache)
        assert grown <= 16 * 1900, (use_cache, grown)
