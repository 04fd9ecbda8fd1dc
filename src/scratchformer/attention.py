"""Multi-head attention: self and cross, causal and padding masks, an optional KV cache.

Shape legend: B batch, T query positions, S key positions, D model width,
H heads, K head width (D = H * K unless the model states K), G key/value heads,
R = H / G query heads per key/value head.

One implementation serves training, evaluation and cached decoding: a cache is
just the keys/values of earlier positions, written in place with
`dynamic_update_slice`, and the mask says which of its slots are real.
Masks are boolean, True where a query may attend, broadcastable to Bx1xTxS.
With G < H key/value heads (grouped-query attention, Ainslie et al. 2023) query head
h reads key/value head h // R, as transformers' repeat_kv lays them out.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .kernels import linear  # textbook or CPU fast path: kernels.FAST decides
from .layers import dropout, init_linear, out_std, rms_normalise


def causal_mask(t: int):
    """1x1xTxT: position t attends to positions <= t."""
    return cache_mask(t, t, 0)


def cache_mask(t: int, s: int, pos):
    """1x1xTxS for T new queries written at slots pos..pos+T-1 of an S-slot cache:
    query i attends to slots j <= pos + i (earlier slots hold earlier tokens)."""
    return (jnp.arange(s)[None, :] <= pos + jnp.arange(t)[:, None])[None, None]


def padding_mask(valid_BxS):
    """Bx1x1xS from a boolean BxS array that is True at real (non-pad) positions."""
    return valid_BxS[:, None, None, :]


def init_self_attention(key, d: int, *, fused: bool, bias: bool, n_layer: int, zero_out: bool = False,
                        q_width: int | None = None, kv_width: int | None = None, qkv_bias: bool = False) -> dict:
    """q: D -> q_width (H*K, default D), k and v: D -> kv_width (G*K, default q_width),
    out: q_width -> D; fused puts q|k|v in one matrix (equal widths only). qkv_bias: q, k
    and v have biases even when `bias` is False (Qwen2)."""
    kq, kk, kv, ko = jax.random.split(key, 4)
    q_width = q_width or d
    kv_width = kv_width or q_width
    out = init_linear(ko, q_width, d, bias=bias, std=out_std(n_layer, zero_out))
    in_bias = bias or qkv_bias
    if fused:
        if kv_width != q_width:
            raise ValueError(f"a fused q|k|v projection needs equal widths, not q {q_width} and k/v {kv_width}")
        return {"qkv": init_linear(kq, d, 3 * q_width, bias=in_bias), "out": out}
    return {"q": init_linear(kq, d, q_width, bias=in_bias), "k": init_linear(kk, d, kv_width, bias=in_bias),
            "v": init_linear(kv, d, kv_width, bias=in_bias), "out": out}


def init_cross_attention(key, d: int, *, fused: bool, bias: bool, n_layer: int, zero_out: bool = False,
                         q_width: int | None = None, kv_width: int | None = None, qkv_bias: bool = False) -> dict:
    """As `init_self_attention`, with fused putting k|v (of the encoder memory) in one matrix."""
    kq, kk, kv, ko = jax.random.split(key, 4)
    q_width = q_width or d
    kv_width = kv_width or q_width
    in_bias = bias or qkv_bias
    p = {"q": init_linear(kq, d, q_width, bias=in_bias),
         "out": init_linear(ko, q_width, d, bias=bias, std=out_std(n_layer, zero_out))}
    if fused:
        p["kv"] = init_linear(kk, d, 2 * kv_width, bias=in_bias)
    else:
        p["k"] = init_linear(kk, d, kv_width, bias=in_bias)
        p["v"] = init_linear(kv, d, kv_width, bias=in_bias)
    return p


def _split_heads(x_BxTxD, n_head: int):
    b, t, d = x_BxTxD.shape
    return x_BxTxD.reshape(b, t, n_head, d // n_head)


def _qk_norm(x_BxTxHxK, eps):
    """QK-norm: each head's query or key divided by its RMS over K, no parameters (as
    modded-nanogpt), which bounds the scores' size; eps None leaves x as it is."""
    return x_BxTxHxK if eps is None else rms_normalise(x_BxTxHxK, eps)


def self_qkv(p: dict, x_BxTxD, n_head: int, qk_eps=None, n_kv_head: int | None = None):
    """Queries BxTxHxK, keys and values BxTxGxK (G = n_kv_head, default H)."""
    if "qkv" in p:
        q, k, v = jnp.split(linear(p["qkv"], x_BxTxD), 3, axis=-1)
    else:
        q, k, v = (linear(p[n], x_BxTxD) for n in ("q", "k", "v"))
    g = n_kv_head or n_head
    q, k, v = _split_heads(q, n_head), _split_heads(k, g), _split_heads(v, g)
    return _qk_norm(q, qk_eps), _qk_norm(k, qk_eps), v


def cross_kv(p: dict, memory_BxSxD, n_kv_head: int, qk_eps=None):
    """Keys and values BxSxGxK of the encoder memory (G = n_kv_head); computed once per
    source when decoding."""
    if "kv" in p:
        k, v = jnp.split(linear(p["kv"], memory_BxSxD), 2, axis=-1)
    else:
        k, v = linear(p["k"], memory_BxSxD), linear(p["v"], memory_BxSxD)
    return _qk_norm(_split_heads(k, n_kv_head), qk_eps), _split_heads(v, n_kv_head)


def repeat_kv(x_BxSxGxK, n_head: int):
    """Each of G key or value heads repeated for its R = H / G query heads, BxSxHxK in
    the order query head h reads kv head h // R (transformers' repeat_kv); as it is for G = H."""
    g = x_BxSxGxK.shape[2]
    return x_BxSxGxK if g == n_head else jnp.repeat(x_BxSxGxK, n_head // g, axis=2)


def attention_weights(q_BxTxHxK, k_BxSxHxK, mask):
    """Softmax(q k^T / sqrt(K)) in float32 (float64 for f64 inputs), BxHxTxS.

    Masked scores get float32's most negative finite value rather than -inf, so a
    row with every key masked (a fully padded sequence) is uniform, never NaN.
    """
    scale = 1.0 / math.sqrt(q_BxTxHxK.shape[-1])
    dt = jnp.promote_types(q_BxTxHxK.dtype, jnp.float32)
    att_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=dt) * scale
    if mask is not None:
        att_BxHxTxS = jnp.where(mask, att_BxHxTxS, jnp.finfo(dt).min)
    return jax.nn.softmax(att_BxHxTxS, axis=-1)


def attend(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, *, rate=0.0, key=None, train=False):
    """Scaled dot-product attention; returns (y_BxTxD, probs_BxHxTxS)."""
    probs = attention_weights(q_BxTxHxK, k_BxSxHxK, mask)
    dropped = dropout(key, probs, rate, train=train).astype(v_BxSxHxK.dtype)
    y_BxTxHxK = jnp.einsum("bhts,bshk->bthk", dropped, v_BxSxHxK)
    b, t, h, k = y_BxTxHxK.shape
    return y_BxTxHxK.reshape(b, t, h * k), probs


# Each query block is its own products in the program, so their number is what XLA
# compiles: 64 blocks a layer at a context of 8,192 (128 positions each) took over a
# minute to compile for a 30-layer model, for a saving that 8 blocks nearly reach (7/16 of
# the score matrix against 63/128).
MAX_QUERY_BLOCKS = 8


def attend_causal(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, *, block: int, rate=0.0, key=None, train=False):
    """Causal self-attention computed in query blocks of `block` positions: block i
    attends to keys 0..(i+1)*block-1 only, so the score blocks above the diagonal,
    which the causal mask would zero anyway, are never computed (with 2 blocks a
    quarter of the score matrix, with 4 three-eighths). Same result as `attend` with
    causal_mask(T); when T is not a multiple of `block`, or is a single block, it is
    that masked version. Blocks are larger than `block` where T would need more than
    MAX_QUERY_BLOCKS of them. Returns y_BxTxD."""
    t = q_BxTxHxK.shape[1]
    mask = causal_mask(t)
    if t // block > MAX_QUERY_BLOCKS and t % MAX_QUERY_BLOCKS == 0:
        block = t // MAX_QUERY_BLOCKS
    if t % block or t <= block:
        y, _ = attend(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, mask, rate=rate, key=key, train=train)
        return y
    ys = []
    for i in range(t // block):
        lo, hi = i * block, (i + 1) * block
        k_i = None if key is None else jax.random.fold_in(key, i)
        y, _ = attend(q_BxTxHxK[:, lo:hi], k_BxTxHxK[:, :hi], v_BxTxHxK[:, :hi], mask[..., lo:hi, :hi],
                      rate=rate, key=k_i, train=train)
        ys.append(y)
    return jnp.concatenate(ys, axis=1)


def _attend_cached(q_BxTxHxK, k_NxKxS, v_NxSxK, mask):
    """Attention over a KV cache kept in the layouts a matmul reads directly: keys
    K x S and values S x K for each of the N = B*G (sequence, key/value head) pairs. One
    flat batch axis, because with separate B and G axes XLA's CPU backend reshapes the
    freshly written cache for each matmul and copies every layer's cache at every
    decoded token. The R query heads that share a key/value head are stacked along the
    query axis (R*T rows against one cache), so the cache is never repeated."""
    b, t, h, k = q_BxTxHxK.shape
    g = k_NxKxS.shape[0] // b
    r = h // g
    scale = 1.0 / math.sqrt(k)
    dt = jnp.promote_types(q_BxTxHxK.dtype, jnp.float32)
    # B x H x T x K is B x G x (R T) x K in memory, as H = G R with query head h = g R + i.
    q_NxRTxK = q_BxTxHxK.transpose(0, 2, 1, 3).reshape(b * g, r * t, k)
    att_NxRTxS = jnp.einsum("ntk,nks->nts", q_NxRTxK, k_NxKxS, preferred_element_type=dt) * scale
    att_BxHxTxS = jnp.where(mask, att_NxRTxS.reshape(b, h, t, -1), jnp.finfo(dt).min)
    probs = jax.nn.softmax(att_BxHxTxS, axis=-1).astype(v_NxSxK.dtype).reshape(b * g, r * t, -1)
    y_NxRTxK = jnp.einsum("nts,nsk->ntk", probs, v_NxSxK)
    return y_NxRTxK.reshape(b, h, t, k).transpose(0, 2, 1, 3).reshape(b, t, h * k)


def cache_slots(cache) -> int:
    """Number of slots S of a cache from models.init_cache (the list of layers)."""
    return cache[0]["v"].shape[1]


def head_gated(p: dict, x_BxTxD, y_BxTxHK, n_head: int):
    """y, each head's K channels times sigmoid(x W_g) of its head when the layer has a
    "head_gate" (W_g: D x H; Qiu et al. 2025, a head-wise gate after attention, which
    lets a head output nearly nothing where softmax must put its weight somewhere)."""
    if "head_gate" not in p:
        return y_BxTxHK
    b, t, _ = y_BxTxHK.shape
    gate_BxTxH = jax.nn.sigmoid(linear(p["head_gate"], x_BxTxD)).astype(y_BxTxHK.dtype)
    return (y_BxTxHK.reshape(b, t, n_head, -1) * gate_BxTxH[..., None]).reshape(b, t, -1)


def self_attention(p: dict, x_BxTxD, *, n_head: int, mask, cache=None, pos=0, rate=0.0, key=None, train=False,
                   causal_block: int = 0, rope=None, qk_eps=None, n_kv_head: int | None = None, values=None):
    """Self-attention with H = n_head query heads and G = n_kv_head (default H) key/value
    heads. With `cache` ({"k": NxKxS, "v": NxSxK}, N = B*G, see models.init_cache) the
    new keys/values are written at slots pos..pos+T-1 and the queries attend over the
    whole cache (the mask must hide unwritten slots).
    Without a cache, causal_block > 0 means plain causal attention computed by
    `attend_causal` in query blocks of that size (`mask` is then not used).
    rope, a function (x_BxTxHxK, pos) -> x (layers.rotary with its settings), rotates
    queries and keys by their positions pos..pos+T-1, so a cache holds keys already
    rotated at their slots. qk_eps (a float) RMS-normalises each head's queries and keys
    before that (the cache holds normalised keys). values (BxTx(G K)) is added to the
    values (value embeddings), and a "head_gate" in p gates each head (`head_gated`).
    Returns (y_BxTxD, new_cache, probs_BxHxTxS); probs only where the whole score
    matrix is formed (no cache, no blocks), else None."""
    q, k, v = self_qkv(p, x_BxTxD, n_head, qk_eps, n_kv_head)
    if values is not None:
        v = v + _split_heads(values, v.shape[2]).astype(v.dtype)
    if rope is not None:
        q, k = rope(q, pos), rope(k, pos)
    if cache is None:
        k, v = repeat_kv(k, n_head), repeat_kv(v, n_head)
    if cache is None and causal_block:
        y = attend_causal(q, k, v, block=causal_block, rate=rate, key=key, train=train)
        return linear(p["out"], head_gated(p, x_BxTxD, y, n_head)), None, None
    if cache is None:
        y, probs = attend(q, k, v, mask, rate=rate, key=key, train=train)
        return linear(p["out"], head_gated(p, x_BxTxD, y, n_head)), None, probs
    b, t, g, kw = k.shape
    k_NxKxT = k.transpose(0, 2, 3, 1).reshape(b * g, kw, t).astype(cache["k"].dtype)
    v_NxTxK = v.transpose(0, 2, 1, 3).reshape(b * g, t, kw).astype(cache["v"].dtype)
    cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k_NxKxT, (0, 0, pos)),
             "v": jax.lax.dynamic_update_slice(cache["v"], v_NxTxK, (0, pos, 0))}
    y = _attend_cached(q, cache["k"], cache["v"], mask)
    return linear(p["out"], head_gated(p, x_BxTxD, y, n_head)), cache, None


def cross_attention(p: dict, x_BxTxD, kv, *, n_head: int, mask, rate=0.0, key=None, train=False, qk_eps=None):
    """Attention from decoder positions to precomputed encoder keys/values `kv` (from
    `cross_kv`, with the same qk_eps; G heads, each read by n_head / G query heads).
    Returns (y_BxTxD, probs_BxHxTxS)."""
    q = _qk_norm(_split_heads(linear(p["q"], x_BxTxD), n_head), qk_eps)
    y, probs = attend(q, repeat_kv(kv[0], n_head), repeat_kv(kv[1], n_head), mask, rate=rate, key=key, train=train)
    return linear(p["out"], y), probs
