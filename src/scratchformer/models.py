"""The two model families, built from layers + attention: a decoder-only LM and an
encoder-decoder. Pre-LN residual blocks (Xiong et al. 2020) throughout. Linear
layers, LayerNorms and the position add are called through kernels.py, whose FAST
chooses layers.py's textbook versions or CPU fast paths with the same numbers.
The "modern block" options of ModelConfig (norm, qk_norm, activation, zero_init,
logit_softcap; the attention's n_kv_head, head_dim, qkv_bias and rope settings; the LM's
value_embed, unet_skips, attn_gate and bigram_embed; its training-only mtp_depth) are
looked up here, in NORM_LAYERS, ACTIVATION_FUNCTIONS and `_rope`, and passed down;
model.products is entered around every function that runs linear layers (`_in_products`).

Shape legend: B batch, T target/time positions, S source positions, D model width,
V vocabulary, L layers.

Parameter trees are nested dicts with stable keys; those keys are the checkpoint names:
  LM:     {"embed": {"tokens", "positions"?, "values"?, "bigrams"?}, "blocks": [{"ln1","attn","ln2","mlp"}...],
           "ln_f", "head"?, "skips"?, "mtp"?: {"blocks": [{"ln_h","ln_e","proj", block's keys, "ln_f"}...]}}
          attn: {"qkv", "out"} (fused) or {"q", "k", "v", "out"}, each linear {"w", "b"?},
                + "head_gate" (linear, no bias) and "value_gain" (1 number) with the LM's options;
          mlp: {"fc", "proj"}, or {"gate", "up", "down"} for swiglu.
  EncDec: {"embed": {"tokens"} or {"src","tgt"}, (+"positions"?),
           "encoder": {"blocks": [...], "ln_f"},
           "decoder": {"blocks": [{"ln1","attn","ln_cross","cross","ln2","mlp"}...], "ln_f"}, "head"?}
  Every norm is {"scale", "bias"} (LayerNorm) or {"scale"} (RMSNorm).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp

from .attention import (cache_mask, cache_slots, causal_mask, cross_attention, cross_kv, init_cross_attention,
                        init_self_attention, padding_mask, self_attention)
from .config import ModelConfig
from .kernels import add_positions, layer_norm, linear  # textbook or CPU fast path: kernels.FAST decides
from .kernels import product_dtype, products
from .layers import (dropout, embed, gelu, gelu_exact, init_embedding, init_layer_norm, init_linear, init_rms_norm,
                     out_std, relu2, rms_norm, rotary, silu, sinusoidal_positions)

PAD_ID = 0  # encoder-decoder token id reserved for padding

# config.NORMS and config.ACTIVATIONS name these. RMSNorm has no fast path: it always
# runs layers.py's version. swiglu's SiLU is a gate: its MLP has gate, up and down.
NORM_LAYERS = {"layernorm": (init_layer_norm, layer_norm), "rmsnorm": (init_rms_norm, rms_norm)}
ACTIVATION_FUNCTIONS = {"gelu_tanh": gelu, "gelu": gelu_exact, "relu2": relu2, "swiglu": silu}
GATED = {"swiglu"}


def compute_dtype(cfg: ModelConfig):
    return jnp.dtype(cfg.dtype)


def _in_products(fn):
    """fn traced under its cfg's model.products (kernels.products)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        cfg = signature.bind(*args, **kwargs).arguments["cfg"]
        with products(product_dtype(cfg.products)):
            return fn(*args, **kwargs)
    return traced


def _keys(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


# ---------------------------------------------------------------- shared pieces
def init_norm(cfg: ModelConfig) -> dict:
    return NORM_LAYERS[cfg.norm][0](cfg.d_model)


def norm(p: dict, x_BxTxD, cfg: ModelConfig):
    """The model's norm (cfg.norm) with its epsilon."""
    return NORM_LAYERS[cfg.norm][1](p, x_BxTxD, cfg.ln_eps)


def _qk_eps(cfg: ModelConfig):
    """What attention takes for qk_norm: its epsilon, or None for off."""
    return cfg.ln_eps if cfg.qk_norm else None


def init_feed_forward(key, d: int, d_ff: int, *, bias: bool, n_layer: int, zero_out: bool = False,
                      gated: bool = False) -> dict:
    """{"fc", "proj"}, or with gated {"gate", "up", "down"}; the layer back into the
    residual stream (proj, down) starts at out_std."""
    if gated:
        kg, ku, kd = jax.random.split(key, 3)
        return {"gate": init_linear(kg, d, d_ff, bias=bias), "up": init_linear(ku, d, d_ff, bias=bias),
                "down": init_linear(kd, d_ff, d, bias=bias, std=out_std(n_layer, zero_out))}
    k1, k2 = jax.random.split(key)
    return {"fc": init_linear(k1, d, d_ff, bias=bias),
            "proj": init_linear(k2, d_ff, d, bias=bias, std=out_std(n_layer, zero_out))}


def feed_forward(p: dict, x_BxTxD, activation=gelu):
    """The position-wise MLP: linear, activation (GELU unless told), linear; a gated MLP
    (Shazeer 2020, GLU variants; SwiGLU with SiLU) is down(activation(gate(x)) * up(x))."""
    if "gate" in p:
        return linear(p["down"], activation(linear(p["gate"], x_BxTxD)) * linear(p["up"], x_BxTxD))
    return linear(p["proj"], activation(linear(p["fc"], x_BxTxD)))


def _rope(cfg: ModelConfig):
    """What attention takes for rotary positions: layers.rotary with the model's
    frequencies, or None for no rotation."""
    if cfg.positions != "rope":
        return None
    llama3 = None
    if cfg.rope_scaling == "llama3":
        llama3 = (cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_positions)
    return functools.partial(rotary, theta=cfg.rope_theta, llama3=llama3)


def _init_block(key, cfg: ModelConfig, *, cross: bool) -> dict:
    ka, kc, km = jax.random.split(key, 3)
    kw = dict(bias=cfg.bias, n_layer=cfg.n_layer, zero_out=cfg.zero_init)
    heads = dict(fused=cfg.fused_qkv, q_width=cfg.n_head * cfg.head_width, kv_width=cfg.kv_heads * cfg.head_width,
                 qkv_bias=cfg.qkv_bias)
    p = {"ln1": init_norm(cfg),
         "attn": {**init_self_attention(ka, cfg.d_model, **heads, **kw), **_init_lm_attention_extras(cfg)},
         "ln2": init_norm(cfg),
         "mlp": init_feed_forward(km, cfg.d_model, cfg.d_ff, gated=cfg.activation in GATED, **kw)}
    if cross:
        p["ln_cross"] = init_norm(cfg)
        p["cross"] = init_cross_attention(kc, cfg.d_model, **heads, **kw)
    return p


def _init_lm_attention_extras(cfg: ModelConfig) -> dict:
    """The attention's parameters for model.attn_gate (W_g, D x H, at zero: every gate
    starts at 1/2, as modded-nanogpt's) and model.value_embed (the layer's gain on the
    value embedding, starting at 1)."""
    p = {}
    if cfg.attn_gate:
        p["head_gate"] = init_linear(None, cfg.d_model, cfg.n_head, bias=False, std=0.0)
    if cfg.value_embed:
        p["value_gain"] = jnp.ones((1,), jnp.float32)
    return p


@_in_products
def _block(p, x_BxTxD, *, cfg: ModelConfig, mask, key=None, train=False, cache=None, pos=0,
           cross=None, causal: bool = False, values=None):
    """One pre-LN block. `cross` = (kv, mask) adds cross-attention. causal=True says
    `mask` is the plain causal mask (no cache), so attention may skip its masked
    blocks (cfg.attn_block). values: the value embedding BxTx(G K), times the layer's
    gain. Returns (x, cache, probs), probs = {"self", "cross"}: the attention weights
    BxHxTxS (self: None when computed in blocks or over a cache)."""
    rate = cfg.dropout
    k_att, k_res1, k_cross, k_res2, k_res3 = _keys(key, 5)
    if values is not None:
        values = values * p["attn"]["value_gain"].astype(values.dtype)
    h, cache, self_probs = self_attention(p["attn"], norm(p["ln1"], x_BxTxD, cfg),
                                          n_head=cfg.n_head, mask=mask, cache=cache, pos=pos, rate=rate,
                                          key=k_att, train=train, causal_block=cfg.attn_block if causal else 0,
                                          rope=_rope(cfg), qk_eps=_qk_eps(cfg), n_kv_head=cfg.kv_heads,
                                          values=values)
    x_BxTxD = x_BxTxD + dropout(k_res1, h, rate, train=train)
    cross_probs = None
    if cross is not None:
        kv, cross_mask = cross
        h, cross_probs = cross_attention(p["cross"], norm(p["ln_cross"], x_BxTxD, cfg), kv, n_head=cfg.n_head,
                                         mask=cross_mask, rate=rate, key=k_cross, train=train, qk_eps=_qk_eps(cfg))
        x_BxTxD = x_BxTxD + dropout(k_res2, h, rate, train=train)
    h = feed_forward(p["mlp"], norm(p["ln2"], x_BxTxD, cfg), ACTIVATION_FUNCTIONS[cfg.activation])
    return x_BxTxD + dropout(k_res3, h, rate, train=train), cache, {"self": self_probs, "cross": cross_probs}


def sinusoidal_token_std(d_model: int) -> float:
    """Std of the token table with sinusoidal positions, which have unit amplitude; the
    table is multiplied by sqrt(D) (Vaswani et al. 2017, sec. 3.4). Vaswani's own std,
    D^-1/2, with the output head tied to the table makes the untrained model predict its
    input token, and reversal then stalls; 0.04 trains both tasks well at D=128. Above
    D=128 it shrinks as D^-3/4, which keeps the tied head's first logit for the input
    token (~ std^2 D^1.5 / (std^2 D + 1/2)^1/2) at its D=128 size."""
    return 0.04 * min(1.0, (128 / d_model) ** 0.75)


def _init_embed(key, cfg: ModelConfig, names) -> dict:
    # Learned positions use GPT-2's 0.02 for tokens and positions; rotary positions have
    # no table (attention rotates queries and keys instead), tokens use 0.02.
    std = sinusoidal_token_std(cfg.d_model) if cfg.positions == "sinusoidal" else 0.02
    keys = jax.random.split(key, len(names) + 1)
    p = {n: init_embedding(k, cfg.vocab_size, cfg.d_model, std=std) for n, k in zip(names, keys)}
    if cfg.positions == "learned":
        p["positions"] = init_embedding(keys[-1], cfg.block_size, cfg.d_model)
    return p


def _embed(p_embed, table_name, ids_BxT, pos, cfg: ModelConfig):
    """Token + position embedding for positions pos..pos+T-1 (rotary: tokens only)."""
    dt = compute_dtype(cfg)
    t = ids_BxT.shape[1]
    x = embed(p_embed[table_name], ids_BxT, dt)
    if cfg.positions == "rope":
        return x
    if cfg.positions == "learned":
        table = p_embed["positions"]
    else:
        x = x * math.sqrt(cfg.d_model)
        table = jnp.asarray(sinusoidal_positions(cfg.block_size, cfg.d_model))
    return add_positions(x, jax.lax.dynamic_slice_in_dim(table, pos, t, axis=0))


@_in_products
def _head(params, table_name, x_BxTxD, cfg: ModelConfig):
    """Logits BxTxV: the output head, or x times the transposed token table when tied;
    soft-capped to (-c, c) by c * tanh(logits / c) when cfg.logit_softcap = c > 0
    (Gemma 2; modded-nanogpt), here so that training and every decoder get it."""
    w_DxV = params["head"]["w"] if "head" in params else params["embed"][table_name].T
    logits = linear({"w": w_DxV}, x_BxTxD)
    c = cfg.logit_softcap
    return c * jnp.tanh(logits / c) if c else logits


def init_cache(cfg: ModelConfig, batch: int, length: int, n_layer: int | None = None):
    """Empty KV cache, per decoder layer {"k": NxKxS, "v": NxSxK}, N = batch * key/value
    heads (sequence-major), S = length slots: the layouts the two attention matmuls read
    without transposing or reshaping the cache (attention._attend_cached)."""
    n, k, dt = batch * cfg.kv_heads, cfg.head_width, compute_dtype(cfg)
    return [{"k": jnp.zeros((n, k, length), dt), "v": jnp.zeros((n, length, k), dt)}
            for _ in range(n_layer or cfg.n_layer)]


def grow_cache(cache, length: int):
    """`cache` (models.init_cache's) with empty slots appended up to `length`: the
    written slots keep their places."""
    def pad(a, axis):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, length - a.shape[axis])
        return jnp.pad(a, widths)
    return [{"k": pad(c["k"], 2), "v": pad(c["v"], 1)} for c in cache]


# ---------------------------------------------------------------- decoder-only LM
def init_lm(key, cfg: ModelConfig) -> dict:
    ke, kb, kh = jax.random.split(key, 3)
    params = {"embed": _init_embed(ke, cfg, ["tokens"]),
              "blocks": [_init_block(k, cfg, cross=False) for k in jax.random.split(kb, cfg.n_layer)],
              "ln_f": init_norm(cfg)}
    if not cfg.tie_embeddings:
        params["head"] = init_linear(kh, cfg.d_model, cfg.vocab_size, bias=False)
    if cfg.value_embed:  # GPT-2's 0.02, as the token table; fold_in leaves the other tables' keys as they were
        params["embed"]["values"] = init_embedding(jax.random.fold_in(ke, 1), cfg.vocab_size,
                                                   cfg.kv_heads * cfg.head_width)
    if cfg.unet_skips:  # one weight per pair of layers, starting at 1 (modded-nanogpt)
        params["skips"] = jnp.ones((cfg.n_layer // 2,), jnp.float32)
    if cfg.bigram_embed:  # at zero: the untrained model is the one without the table
        params["embed"]["bigrams"] = jnp.zeros(((cfg.vocab_size + 1) * cfg.vocab_size, cfg.d_model), jnp.float32)
    if cfg.mtp_depth:
        params["mtp"] = init_mtp(jax.random.fold_in(kb, 1), cfg)
    return params


def bigram_ids(ids_BxT, prev_B, vocab: int):
    """Row of each token's (previous, current) pair in model.bigram_embed's table:
    previous * V + current, the previous symbol of the first token being `prev_B` or, where
    None (a window's start, in training, evaluation and every prefill alike), V."""
    first = jnp.full(ids_BxT.shape[:1], vocab, ids_BxT.dtype) if prev_B is None else prev_B.astype(ids_BxT.dtype)
    prev_BxT = jnp.concatenate([first[:, None], ids_BxT[:, :-1]], axis=1)
    return prev_BxT * vocab + ids_BxT


def _lm_trunk(params, ids_BxT, *, cfg: ModelConfig, train, key, cache, pos, blocked: bool, prev=None):
    """Embedding, blocks and final norm: (x_BxTxD, new cache, per-layer self-attention
    probs). blocked: causal attention may run in query blocks (no probs then). prev: the
    ids before the first of ids_BxT (model.bigram_embed; see bigram_ids).
    model.unet_skips: the outputs of the first L // 2 layers are kept, and layer
    L - 1 - i adds layer i's, times params["skips"][L // 2 - 1 - i], to its input."""
    t = ids_BxT.shape[1]
    k_emb, *k_blocks = _keys(key, cfg.n_layer + 1)
    x = _embed(params["embed"], "tokens", ids_BxT, pos, cfg)
    if cfg.bigram_embed:
        x = x + embed(params["embed"]["bigrams"], bigram_ids(ids_BxT, prev, cfg.vocab_size), x.dtype)
    x = dropout(k_emb, x, cfg.dropout, train=train)
    values = embed(params["embed"]["values"], ids_BxT, x.dtype) if cfg.value_embed else None
    mask = causal_mask(t) if cache is None else cache_mask(t, cache_slots(cache), pos)
    half = cfg.n_layer // 2 if cfg.unet_skips else 0
    new_cache, probs, kept = [], [], []
    for i, p in enumerate(params["blocks"]):
        if half and i >= cfg.n_layer - half:
            x = x + params["skips"][i - (cfg.n_layer - half)].astype(x.dtype) * kept.pop()
        x, c, pr = _block(p, x, cfg=cfg, mask=mask, key=k_blocks[i], train=train,
                          cache=None if cache is None else cache[i], pos=pos, causal=blocked, values=values)
        if i < half:
            kept.append(x)
        new_cache.append(c)
        probs.append(pr["self"])
    return norm(params["ln_f"], x, cfg), new_cache, probs


def lm_forward(params, ids_BxT, *, cfg: ModelConfig, train=False, key=None, cache=None, pos=0, at=None, prev=None):
    """Logits BxTxV for tokens at positions pos..pos+T-1.

    Without a cache the sequence attends causally to itself (pos must be 0). With a
    cache (from `init_cache`, S slots) the T tokens are written at slots pos.. and
    attend to every earlier slot. `at` (an index into T, may be traced): the logits of
    that one token only, Bx1xV, for a sampler (the head's T x D x V product is the
    largest of a forward pass at a large vocabulary). `prev` (B ids, may be traced): the
    tokens before ids_BxT's first, which model.bigram_embed pairs it with; None at a
    window's start. Returns (logits, new_cache)."""
    x, new_cache, _ = _lm_trunk(params, ids_BxT, cfg=cfg, train=train, key=key, cache=cache, pos=pos,
                                blocked=cache is None, prev=prev)
    if at is not None:
        x = jax.lax.dynamic_slice_in_dim(x, at, 1, axis=1)
    return _head(params, "tokens", x, cfg), (None if cache is None else new_cache)


def _mtp_block_cfg(cfg: ModelConfig) -> ModelConfig:
    # A module's block has no value embedding to add (the trunk's table feeds the trunk).
    return dataclasses.replace(cfg, value_embed=False)


def init_mtp(key, cfg: ModelConfig) -> dict:
    """The model.mtp_depth multi-token prediction modules (DeepSeek-V3, sec. 2.2): each
    norms its two inputs, projects them side by side (2D -> D), runs a block of the
    trunk's kind and has a final norm of its own; the token table and head are the
    trunk's. Under "blocks", so that Muon trains their matrices as the trunk's."""
    modules = []
    for k in jax.random.split(key, cfg.mtp_depth):
        kp, kb = jax.random.split(k)
        modules.append({"ln_h": init_norm(cfg), "ln_e": init_norm(cfg),
                        "proj": init_linear(kp, 2 * cfg.d_model, cfg.d_model, bias=False),
                        **_init_block(kb, _mtp_block_cfg(cfg), cross=False), "ln_f": init_norm(cfg)})
    return {"blocks": modules}


def ahead(ids_BxT, k: int):
    """ids_BxT moved k places to the left, the last k positions 0 (past the window)."""
    return jnp.pad(ids_BxT[:, k:], ((0, 0), (0, k))) if k else ids_BxT


@_in_products
def lm_forward_mtp(params, ids_BxT, next_BxT, *, cfg: ModelConfig, train=False, key=None):
    """Training's forward pass with model.mtp_depth modules: (lm_forward's logits BxTxV,
    [module k's logits BxTxV for k = 1..mtp_depth]). next_BxT: each position's next token
    (the targets). Module k at position i reads module k-1's output there (the trunk's,
    normed, for k = 1) and the embedding of token i+k, and predicts token i+k+1; for
    i + k >= T that token is past the window (the loss gives those positions no weight)."""
    k_trunk, *k_mtp = _keys(key, cfg.mtp_depth + 1)
    h, _, _ = _lm_trunk(params, ids_BxT, cfg=cfg, train=train, key=k_trunk, cache=None, pos=0, blocked=True)
    logits, inner, mask = [_head(params, "tokens", h, cfg)], _mtp_block_cfg(cfg), causal_mask(ids_BxT.shape[1])
    for k, (p, key_k) in enumerate(zip(params["mtp"]["blocks"], k_mtp), 1):
        e = embed(params["embed"]["tokens"], ahead(next_BxT, k - 1), h.dtype)
        x = linear(p["proj"], jnp.concatenate([norm(p["ln_h"], h, cfg), norm(p["ln_e"], e, cfg)], axis=-1))
        h, _, _ = _block(p, x, cfg=inner, mask=mask, key=key_k, train=train, causal=True)
        logits.append(_head(params, "tokens", norm(p["ln_f"], h, cfg), cfg))
    return logits[0], logits[1:]


def lm_attention(params, ids_BxT, *, cfg: ModelConfig):
    """Every layer's causal self-attention weights for tokens at positions 0..T-1, a list
    of L arrays BxHxTxT (row t: how position t spreads its attention over 0..t). The
    same computation as lm_forward's, with each layer's whole score matrix formed (not
    in query blocks) so that it can be looked at (plots.py)."""
    return _lm_trunk(params, ids_BxT, cfg=cfg, train=False, key=None, cache=None, pos=0, blocked=False)[2]


# ---------------------------------------------------------------- encoder-decoder
def _table_names(cfg: ModelConfig):
    return ("tokens", "tokens") if cfg.tie_embeddings else ("src", "tgt")


def init_encdec(key, cfg: ModelConfig) -> dict:
    """Encoder and decoder stacks of cfg.n_layer blocks each. With tie_embeddings the
    source, target and output tables are one matrix (same vocabulary on both sides)."""
    ke, kenc, kdec, kh = jax.random.split(key, 4)
    src_name, tgt_name = _table_names(cfg)
    params = {
        "embed": _init_embed(ke, cfg, sorted({src_name, tgt_name})),
        "encoder": {"blocks": [_init_block(k, cfg, cross=False) for k in jax.random.split(kenc, cfg.n_layer)],
                    "ln_f": init_norm(cfg)},
        "decoder": {"blocks": [_init_block(k, cfg, cross=True) for k in jax.random.split(kdec, cfg.n_layer)],
                    "ln_f": init_norm(cfg)},
    }
    if not cfg.tie_embeddings:
        params["head"] = init_linear(kh, cfg.d_model, cfg.vocab_size, bias=False)
    return params


def encode(params, src_BxS, *, cfg: ModelConfig, train=False, key=None):
    """Encoder memory BxSxD; PAD_ID positions are masked out as keys."""
    k_emb, *k_blocks = _keys(key, cfg.n_layer + 1)
    x = dropout(k_emb, _embed(params["embed"], _table_names(cfg)[0], src_BxS, 0, cfg), cfg.dropout, train=train)
    mask = padding_mask(src_BxS != PAD_ID)
    for i, p in enumerate(params["encoder"]["blocks"]):
        x, _, _ = _block(p, x, cfg=cfg, mask=mask, key=k_blocks[i], train=train)
    return norm(params["encoder"]["ln_f"], x, cfg)


@_in_products
def memory_kv(params, memory_BxSxD, cfg: ModelConfig):
    """Cross-attention keys/values of every decoder layer, computed once per source."""
    return [cross_kv(p["cross"], memory_BxSxD, cfg.kv_heads, _qk_eps(cfg)) for p in params["decoder"]["blocks"]]


def decode(params, tgt_BxT, kvs, src_valid_BxS, *, cfg: ModelConfig, train=False, key=None,
           cache=None, pos=0):
    """Decoder logits BxTxV given the memory's keys/values. Returns (logits, cache, probs)
    where probs is the list of per-layer cross-attention weights BxHxTxS."""
    t = tgt_BxT.shape[1]
    k_emb, *k_blocks = _keys(key, cfg.n_layer + 1)
    x = dropout(k_emb, _embed(params["embed"], _table_names(cfg)[1], tgt_BxT, pos, cfg), cfg.dropout, train=train)
    self_mask = causal_mask(t) if cache is None else cache_mask(t, cache_slots(cache), pos)
    cross_mask = padding_mask(src_valid_BxS)
    new_cache, probs = [], []
    for i, p in enumerate(params["decoder"]["blocks"]):
        x, c, pr = _block(p, x, cfg=cfg, mask=self_mask, key=k_blocks[i], train=train,
                          cache=None if cache is None else cache[i], pos=pos, cross=(kvs[i], cross_mask),
                          causal=cache is None)
        new_cache.append(c)
        probs.append(pr["cross"])
    x = norm(params["decoder"]["ln_f"], x, cfg)
    return _head(params, _table_names(cfg)[1], x, cfg), (None if cache is None else new_cache), probs


def encdec_forward(params, src_BxS, tgt_BxT, *, cfg: ModelConfig, train=False, key=None):
    """Teacher-forced logits BxTxV."""
    k_enc, k_dec = _keys(key, 2)
    memory = encode(params, src_BxS, cfg=cfg, train=train, key=k_enc)
    logits, _, _ = decode(params, tgt_BxT, memory_kv(params, memory, cfg), src_BxS != PAD_ID,
                          cfg=cfg, train=train, key=k_dec)
    return logits
