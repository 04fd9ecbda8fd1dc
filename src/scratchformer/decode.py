"""Decoding, each a whole jit-compiled loop (no Python call per token):

* LM sampling with temperature / top-k / top-p, with or without a KV cache, ended
  early where a stop id (the end of text) is drawn;
* encoder-decoder greedy and beam search, with a KV cache for decoder
  self-attention and the encoder's cross-attention keys/values computed once.

Shape legend: B batch, W beams, S source slots, T target slots / context, V vocab.

Contexts longer than the block size (LM): a sliding window. The model always sees
the tokens window[s:n]; when n - s would exceed the block size T, the window jumps
to the last `keep = T // 2` tokens (s = n - keep), and with the cache those are
re-encoded in one forward pass (a "re-prefill"). Cached and uncached sampling
follow the same rule, so they see the same context and give the same tokens.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .data.reverse import BOS, EOS, PAD
from .gumbel import gumbel
from .kernels import decoding_layout
from .memory import check_fits, tree_bytes
from .models import PAD_ID, decode, encode, grow_cache, init_cache, lm_forward, memory_kv
from .parallel import chunks_on_mesh, host_value, make_mesh


# ---------------------------------------------------------------- sampling rules
def filter_logits(logits_V, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """Temperature, then top-k (keep the k largest), then top-p (keep the smallest set of
    most likely tokens whose probability reaches p). Removed tokens get -inf."""
    logits_V = logits_V.astype(jnp.float32) / temperature
    if top_k:
        kth = jnp.sort(logits_V)[-top_k]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    if top_p < 1.0:
        order = jnp.argsort(-logits_V)
        probs = jax.nn.softmax(logits_V[order])
        before = jnp.cumsum(probs) - probs  # mass of strictly more likely tokens
        keep_sorted = before < top_p        # the first token is always kept
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        logits_V = jnp.where(keep, logits_V, -jnp.inf)
    return logits_V


# The noise is drawn this wide (the vocabulary rounded up), the logits padded to match:
# XLA's CPU backend runs an elementwise loop of odd length several times slower. The noise
# and the pick alone in a loop of 300 tokens at V = 50,257 (2-core AMD EPYC, JAX 0.10.2):
# 3,500-4,300 us a token unpadded, 290-330 us padded to 64.
NOISE_ALIGN = 64


def sample_token(key, i, logits_V, *, temperature: float, top_k: int, top_p: float):
    """Token i of the sample seeded by `key` (a raw threefry key): one id from
    softmax(filtered logits) by the Gumbel-max trick, the argmax of logits + standard
    Gumbel noise (what jax.random.categorical does inside). Token i's noise is
    jax.random.gumbel(fold_in(key, i), (V,)), from a key of its own: it depends on the seed
    and i alone, so a sample of any length holds one token's noise at a time, and cached
    and uncached sampling, or a shorter and a longer sample, give token i the same noise.
    (gumbel.py computes it, faster on a CPU.) temperature 0 is greedy and ignores the
    noise."""
    if temperature == 0.0:
        return jnp.argmax(logits_V).astype(jnp.int32)
    v = logits_V.shape[-1]
    width = -(-v // NOISE_ALIGN) * NOISE_ALIGN
    filtered = filter_logits(logits_V, temperature=temperature, top_k=top_k, top_p=top_p)
    noise = gumbel(jax.random.fold_in(key, i), width)  # = jax.random.gumbel(that key, (width,))
    scores = jnp.pad(filtered, (0, width - v), constant_values=-jnp.inf) + noise
    # top_k(., 1) is argmax (the first of equal maxima), but not a reduction XLA fuses the
    # noise into: its CPU backend runs such a fused reduction an element at a time, and
    # the noise alone in a loop of its own several times faster.
    return jax.lax.top_k(scores, 1)[1][0]


# ---------------------------------------------------------------- LM generation
CACHE_SLOTS, CACHE_GROWTH = 256, 4  # the cache's first size, and its growth factor


def cache_sizes(n_filled: int, n_steps: int) -> list[int]:
    """The KV cache's sizes while `n_steps` single-token steps follow a prefill of
    `n_filled` tokens (step i writes slot n_filled + i): CACHE_SLOTS, or the first
    CACHE_GROWTH multiple of it the prefill fits in, then GROWTH times more each time
    it is full, the last exactly the slots the steps need (the block size when the
    window fills and slides on). Few sizes, as each is a loop compiled apart; past the
    first, no step reads more than GROWTH times the slots it needs."""
    need, size = n_filled + n_steps, CACHE_SLOTS
    while size < n_filled:
        size *= CACHE_GROWTH
    sizes = [min(size, need)]
    while sizes[-1] < need:
        sizes.append(min(sizes[-1] * CACHE_GROWTH, need))
    return sizes


@jax.jit
def decoding_weights(params) -> dict:
    """The block weights as the cached sampler's one-token steps read them
    (kernels.decoding_layout). `generate` converts them in every call unless given them:
    a caller sampling more than once makes them once and passes them as `layout`."""
    return decoding_layout(params["blocks"])


@partial(jax.jit, static_argnames=("cfg", "n_prompt", "n_new", "temperature", "top_k", "top_p", "use_cache",
                                   "stop"))
def _generate(params, tokens_L, key, layout=None, *, cfg: ModelConfig, n_prompt: int, n_new: int,
              temperature: float, top_k: int, top_p: float, use_cache: bool, stop: int | None = None):
    """(buffer of the prompt and n_new ids, the number of them generated): n_new, or fewer
    when the `stop` id was drawn, which ends the sample (the ids after it are left over).
    Each loop carries that count last, as `ended`."""
    big_t = cfg.block_size
    keep = max(1, big_t // 2)
    # Room for a full window read past the last token.
    buf = jnp.concatenate([tokens_L, jnp.zeros((big_t,), jnp.int32)])

    def window(buf, s, length=big_t):
        return jax.lax.dynamic_slice_in_dim(buf, s, length)[None]

    def prefill(buf, s, length: int, slots: int = big_t):
        """Encode the `length` tokens from s on (a static count: the prompt's part in
        the window, or `keep`) into a fresh cache of `slots`; logits after the last of them."""
        logits, cache = lm_forward(params, window(buf, s, length), cfg=cfg, cache=init_cache(cfg, 1, slots), pos=0,
                                   at=length - 1)
        return logits[0, 0], cache

    def full(buf, s, n):
        logits, _ = lm_forward(params, window(buf, s), cfg=cfg, at=n - s - 1)
        return logits[0, 0]

    s0 = max(0, n_prompt - big_t)

    def sample_at(buf, i, logits, ended):
        """Draw the token of step i (position n_prompt + i) and write it into buf; the
        stop id ends the sample after it (no step runs once `ended` is below n_new)."""
        tok = sample_token(key, i, logits, temperature=temperature, top_k=top_k, top_p=top_p)
        if stop is not None:
            ended = jnp.where(tok == stop, i + 1, ended)
        return buf.at[n_prompt + i].set(tok), tok, ended

    def steps(lo, hi, body, carry):
        """fori_loop(lo, hi, body, carry), left early once the stop id is drawn."""
        if stop is None:  # a counted loop: no condition to read each token
            return jax.lax.fori_loop(lo, hi, body, carry)
        out = jax.lax.while_loop(lambda c: (c[0] < hi) & (c[1][-1] == n_new), lambda c: (c[0] + 1, body(*c)),
                                 (jnp.asarray(lo, jnp.int32), carry))
        return out[1]

    if not use_cache:
        def body(i, carry):
            buf, s, logits, ended = carry
            buf, _, ended = sample_at(buf, i, logits, ended)
            n = n_prompt + i + 1
            s = jnp.where(n - s > big_t, n - keep, s)  # the sliding-window rule
            return buf, s, full(buf, s, n), ended

        buf, _, _, ended = steps(0, n_new, body, (buf, jnp.int32(s0), full(buf, s0, n_prompt), jnp.int32(n_new)))
        return buf[: n_prompt + n_new], ended

    # With the cache the same rule has a static schedule: after a (re-)prefill that
    # leaves `filled` tokens in the cache, T - filled single-token steps fit, then the
    # next token triggers a re-prefill of the last `keep` tokens. Laying the loop out
    # that way (no lax.cond inside it) keeps XLA from copying the cache every token.
    # One-token steps multiply by each weight matrix as a matrix-vector product, for
    # which kernels.py may store the weights in another layout: `layout` when the caller
    # made it once (decoding_weights), else converted here, before the loops. The
    # (re-)prefills are ordinary matrix products and keep the training layout.
    step_params = {**params, "blocks": decoding_weights(params) if layout is None else layout}

    def single(i, carry):
        buf, s, logits, cache, ended = carry
        buf, tok, ended = sample_at(buf, i, logits, ended)
        # The token before `tok` is in the window: a step never starts one (bigram_embed's pair).
        out, cache = lm_forward(step_params, tok[None, None], cfg=cfg, cache=cache, pos=n_prompt + i - s,
                                prev=buf[n_prompt + i - 1][None])
        return buf, s, out[0, 0], cache, ended

    def slide(i, carry):
        buf, _, logits, _, ended = carry
        buf, _, ended = sample_at(buf, i, logits, ended)
        s = n_prompt + i + 1 - keep
        logits, cache = prefill(buf, s, keep)
        return buf, s, logits, cache, ended

    def period(j, carry, start, length):
        i = start + j * (1 + length)
        carry = slide(i, carry)
        return steps(i + 1, i + 1 + length, single, carry)

    # Until the window first fills, the cache grows in steps (cache_sizes): a token's
    # attention reads the slots of its step's size, not the whole block, whose reads at
    # a long context (8,192 positions) would cost as much as the weights'.
    first = min(n_new, big_t - (n_prompt - s0))        # single steps until the cache is full
    sizes = cache_sizes(n_prompt - s0, first)
    logits0, cache0 = prefill(buf, s0, n_prompt - s0, sizes[0])
    carry, done = (buf, jnp.int32(s0), logits0, cache0, jnp.int32(n_new)), 0
    for k, size in enumerate(sizes):
        if k:
            carry = (*carry[:3], grow_cache(carry[3], size), carry[4])
        end = min(first, size - (n_prompt - s0))       # step i writes slot n_prompt - s0 + i
        carry, done = steps(done, end, single, carry), end
    per = big_t - keep                                 # single steps after each re-prefill
    n_periods, rest = divmod(n_new - first, 1 + per)
    if n_periods:  # traced only where it runs: its re-prefills make caches of the whole block
        carry = steps(0, n_periods, partial(period, start=first, length=per), carry)
    if rest:  # a loop of one period where the sample may have ended: no re-prefill after it
        last = partial(period, start=first + n_periods * (1 + per), length=rest - 1)
        carry = last(0, carry) if stop is None else steps(0, 1, last, carry)
    return carry[0][: n_prompt + n_new], carry[4]


def generate(params, cfg: ModelConfig, prompt_ids, n_new: int, *, seed: int = 0, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, use_cache: bool = True, layout=None,
             stop: int | None = None) -> np.ndarray:
    """Prompt ids (at least one) followed by n_new generated ids, as numpy; with `stop`
    (an id: the tokenizer's end of text), fewer where that id is drawn, the ids ending
    with it, as transformers' generate(eos_token_id=stop). Token i is the same with a
    stop or without: the ids are those of the longer sample cut after the first stop.
    `layout`: decoding_weights(params), to reuse over several calls (with the cache only)."""
    prompt = np.asarray(prompt_ids, np.int32)
    if prompt.ndim != 1 or len(prompt) == 0:
        raise ValueError("the prompt must hold at least one token")
    if not 0 < n_new < 2**31 - len(prompt):  # positions are int32
        raise ValueError(f"n_new={n_new} must be in [1, {2**31 - 1 - len(prompt)}]")
    key = jax.random.PRNGKey(seed)
    # Compiled ahead (JAX caches it: a repeated call neither traces nor compiles again) so
    # that a sample too long for memory (its ids, 4 bytes per token, are held three times:
    # the input, the loop's buffer and the output) is an error first.
    tokens = jax.ShapeDtypeStruct((len(prompt) + n_new,), jnp.int32)
    layout = layout if use_cache else None
    run = _generate.lower(params, tokens, key, layout, cfg=cfg, n_prompt=len(prompt), n_new=n_new,
                          temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                          use_cache=use_cache, stop=None if stop is None else int(stop)).compile()
    check_fits(run, jax.local_devices()[:1], what=f"sampling {n_new:,} tokens",
               advice="ask for fewer tokens", allocated=tree_bytes(params) + tree_bytes(layout))
    tokens = jnp.concatenate([jnp.asarray(prompt), jnp.zeros((n_new,), jnp.int32)])
    ids, n_out = run(params, tokens, key, layout)
    return np.asarray(ids)[: len(prompt) + int(n_out)]


# ---------------------------------------------------------------- encoder-decoder
@partial(jax.jit, static_argnames=("cfg", "max_out", "use_cache"))
def greedy(params, src_BxS, *, cfg: ModelConfig, max_out: int, use_cache: bool = True):
    """Greedy decoding: BxT ids (T = max_out), PAD after each sequence's EOS."""
    b = src_BxS.shape[0]
    valid = src_BxS != PAD_ID
    kvs = memory_kv(params, encode(params, src_BxS, cfg=cfg), cfg)
    out = jnp.full((b, max_out), PAD, jnp.int32)
    prev = jnp.full((b,), BOS, jnp.int32)
    cache = init_cache(cfg, b, max_out) if use_cache else None

    def cond(c):
        i, _, _, done, _ = c
        return (i < max_out) & ~jnp.all(done)

    def body(c):
        i, out, prev, done, cache = c
        if use_cache:
            logits, cache, _ = decode(params, prev[:, None], kvs, valid, cfg=cfg, cache=cache, pos=i)
            logits = logits[:, 0]
        else:  # full teacher-forced pass over BOS + everything so far
            inp = jnp.concatenate([jnp.full((b, 1), BOS, jnp.int32), out[:, :-1]], axis=1)
            logits, _, _ = decode(params, inp, kvs, valid, cfg=cfg)
            logits = jnp.take(logits, i, axis=1)
        nxt = jnp.where(done, PAD, jnp.argmax(logits, -1).astype(jnp.int32))
        out = out.at[:, i].set(nxt)
        return i + 1, out, nxt, done | (nxt == EOS), cache

    _, out, _, _, _ = jax.lax.while_loop(cond, body, (0, out, prev, jnp.zeros((b,), bool), cache))
    return out


@partial(jax.jit, static_argnames=("cfg", "max_out", "beam", "alpha"))
def beam_search(params, src_BxS, *, cfg: ModelConfig, max_out: int, beam: int, alpha: float = 0.6):
    """Beam search with a KV cache. Beams are ranked by total log-probability while
    searching; finished hypotheses (EOS emitted) keep their score, and the answer is
    the hypothesis with the best length-normalised score log p / len^alpha
    (Wu et al. 2016 use ((5+len)/6)^alpha; plain len^alpha here). Returns BxT ids."""
    b = src_BxS.shape[0]
    w = beam
    src = jnp.repeat(src_BxS, w, axis=0)                      # (B*W) x S
    valid = src != PAD_ID
    kvs = memory_kv(params, encode(params, src_BxS, cfg=cfg), cfg)
    kvs = [tuple(jnp.repeat(a, w, axis=0) for a in kv) for kv in kvs]
    cache = init_cache(cfg, b * w, max_out)
    tokens = jnp.full((b, w, max_out), PAD, jnp.int32)
    scores = jnp.tile(jnp.asarray([0.0] + [-jnp.inf] * (w - 1), jnp.float32), (b, 1))
    done = jnp.zeros((b, w), bool)
    lengths = jnp.zeros((b, w), jnp.int32)
    prev = jnp.full((b * w,), BOS, jnp.int32)

    def cond(c):
        i, *_, done = c
        return (i < max_out) & ~jnp.all(done)

    def body(c):
        i, tokens, scores, lengths, prev, cache, done = c
        logits, cache, _ = decode(params, prev[:, None], kvs, valid, cfg=cfg, cache=cache, pos=i)
        logp = jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)).reshape(b, w, -1)
        v = logp.shape[-1]
        # A finished hypothesis can only be extended by PAD, at no cost.
        pad_only = jnp.where(jnp.arange(v) == PAD, 0.0, -jnp.inf)
        logp = jnp.where(done[..., None], pad_only, logp)
        cand = (scores[..., None] + logp).reshape(b, w * v)
        scores, flat = jax.lax.top_k(cand, w)
        src_beam, tok = flat // v, (flat % v).astype(jnp.int32)
        pick = lambda x: jnp.take_along_axis(x, src_beam.reshape(b, w, *([1] * (x.ndim - 2))), axis=1)
        tokens = pick(tokens).at[:, :, i].set(tok)
        was_done = pick(done)
        lengths = pick(lengths) + (~was_done).astype(jnp.int32)
        done = was_done | (tok == EOS)
        flat_idx = (src_beam + jnp.arange(b)[:, None] * w).reshape(-1)
        # cache arrays are (B*W*G) x ... (G key/value heads): move whole (sequence, all heads) groups
        cache = jax.tree.map(lambda a: a.reshape(b * w, -1, *a.shape[1:])[flat_idx].reshape(a.shape), cache)
        return i + 1, tokens, scores, lengths, tok.reshape(-1), cache, done

    _, tokens, scores, lengths, _, _, _ = jax.lax.while_loop(
        cond, body, (0, tokens, scores, lengths, prev, cache, done))
    norm = scores / jnp.maximum(lengths, 1).astype(jnp.float32) ** alpha
    best = jnp.argmax(norm, axis=1)
    return jnp.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]


def seq2seq_decode(params, cfg: ModelConfig, src_BxS, *, beam: int = 1):
    max_out = src_BxS.shape[1] + 1
    if beam > 1:
        return beam_search(params, jnp.asarray(src_BxS), cfg=cfg, max_out=max_out, beam=beam)
    return greedy(params, jnp.asarray(src_BxS), cfg=cfg, max_out=max_out)


# Hypotheses (sequences x beam width) decoded per call: each holds a KV cache per
# decoder layer; capping them bounds the memory a wide beam takes, and smaller calls
# cost no time.
BEAM_HYPOTHESES = 4096


def seq2seq_accuracy(params, cfg: ModelConfig, ev: dict, *, beam: int = 1, chunk: int = 1000, mesh=None,
                     on_decoded=None) -> dict:
    """Exact match (the whole output, EOS included, nothing after it) and token accuracy
    over a held-out set {"src","tgt_out"}; decoded in fixed-size chunks split over the
    mesh's devices, at most `chunk` sequences and BEAM_HYPOTHESES hypotheses a call.
    `on_decoded(n)`: called after each call with the number of sequences it decoded."""
    chunk = min(chunk, max(1, BEAM_HYPOTHESES // beam))
    tgt = np.asarray(ev["tgt_out"])
    n = len(tgt)
    exact = correct = total = i = 0
    for m, part in chunks_on_mesh({"src": ev["src"]}, chunk, mesh or make_mesh()):
        pred = host_value(seq2seq_decode(params, cfg, part["src"], beam=beam))[:m]
        t = tgt[i:i + m]
        i += m
        exact += int(np.all(pred == t, axis=1).sum())
        real = t != PAD
        correct += int(((pred == t) & real).sum())
        total += int(real.sum())
        if on_decoded:
            on_decoded(m)
    return {"exact_match": exact / n, "token_accuracy": correct / max(total, 1), "sequences": n,
            "beam": beam}
