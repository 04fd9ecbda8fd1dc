"""Both models' logits against a float64 numpy reference written from the papers'
equations (GPT-2's pre-LN decoder; Vaswani et al.'s encoder-decoder with sinusoidal
positions, here pre-LN too), sharing nothing with the package but the parameter names
and the config's option values. The block options (RMSNorm, QK-norm, exact GELU, ReLU
squared, SwiGLU, a logit soft-cap, an untied head, no biases or biases on q, k and v
only, grouped-query attention, a stated head width, rotary positions with their base and
Llama 3's scaling; the LM's value embeddings, U-net skips and head-wise attention gates;
training's multi-token prediction) are checked one at a time and together (as LLaMA, Qwen2 and the cpu-record recipe combine
them), the JAX model in float64 there so that only a wrong formula could differ. The
parameters are perturbed so that every bias and gain matters."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer.config import ModelConfig
from scratchformer.loss import lm_loss
from scratchformer.models import PAD_ID, encdec_forward, init_encdec, init_lm, lm_forward

from conftest import float64

# Each block option alone, and all of them together (zero_init changes the initial
# parameters only, which _perturbed moves off zero: the forward pass must ignore it).
OPTIONS = {
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "gelu": dict(activation="gelu"),
    "relu2": dict(activation="relu2"),
    "softcap": dict(logit_softcap=2.0),
    "untied": dict(tie_embeddings=False),
    "all": dict(norm="rmsnorm", qk_norm=True, activation="relu2", logit_softcap=2.0, tie_embeddings=False,
                zero_init=True),
    "swiglu": dict(activation="swiglu"),
    "no_bias": dict(bias=False),
    "qkv_bias": dict(bias=False, qkv_bias=True),
    "gqa": dict(n_kv_head=2, fused_qkv=False),  # 4 query heads, 2 key/value heads
    "mqa": dict(n_kv_head=1, fused_qkv=False),  # all 4 share one (Shazeer 2019)
    "head_dim": dict(head_dim=12),              # 4 heads of 12 in a model 32 wide
    "rope": dict(positions="rope"),
    "rope_theta": dict(positions="rope", rope_theta=500000.0),
    # A base of 100 and a 64-position original context put the K = 8 head's four
    # wavelengths (6.3, 20, 63, 200) in every band of the scaling: kept, blended (two), divided.
    "llama3": dict(positions="rope", rope_theta=100.0, rope_scaling="llama3", rope_original_positions=64),
    "llama": dict(norm="rmsnorm", positions="rope", activation="swiglu", n_kv_head=2, fused_qkv=False, bias=False,
                  tie_embeddings=False, rope_theta=100.0, rope_scaling="llama3", rope_original_positions=64),
    "qwen2": dict(norm="rmsnorm", positions="rope", activation="swiglu", n_kv_head=2, fused_qkv=False, bias=False,
                  qkv_bias=True, tie_embeddings=False, rope_theta=1e6, head_dim=12),
    "value_embed": dict(value_embed=True),
    "value_embed_gqa": dict(value_embed=True, n_kv_head=2, fused_qkv=False, head_dim=12),
    "unet_skips": dict(unet_skips=True),
    "unet_skips_odd": dict(unet_skips=True, n_layer=3),  # the middle layer has no partner
    "attn_gate": dict(attn_gate=True),
    "attn_gate_rope": dict(attn_gate=True, positions="rope", n_kv_head=2, fused_qkv=False),
    "record": dict(value_embed=True, unet_skips=True, attn_gate=True, n_layer=4),
    "bigram_embed": dict(bigram_embed=True),
    "bigram_embed_rope": dict(bigram_embed=True, positions="rope", value_embed=True),
}
# Options whose reference, turned off on the same parameters, must give logits further
# off than the tolerances below (so that the comparison fails if the model ignores them).
OFF = {"qk_norm": False, "activation": "gelu_tanh", "logit_softcap": 0.0, "qkv_bias": False, "rope_theta": 10000.0,
       "rope_scaling": "", "value_embed": False, "unet_skips": False, "attn_gate": False,
       "bigram_embed": False}


def _perturbed(params, seed):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _np(params):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


def rms(x, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)


def ln(p, x, cfg):
    """LayerNorm (Ba et al. 2016), or RMSNorm (Zhang & Sennrich 2019): no mean, no bias."""
    if cfg.norm == "rmsnorm":
        return rms(x, cfg.ln_eps) * p["scale"]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.ln_eps) * p["scale"] + p["bias"]


def activation(x, cfg):
    if cfg.activation == "gelu_tanh":  # GPT-2's
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    if cfg.activation == "gelu":  # x Phi(x)
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    if cfg.activation == "swiglu":  # its gate: SiLU, x sigmoid(x)
        return x / (1 + np.exp(-x))
    assert cfg.activation == "relu2"  # Primer's
    return np.maximum(x, 0) ** 2


def lin(p, x, bias):
    return x @ p["w"] + p["b"] if bias else x @ p["w"]


def frequencies(k, cfg):
    """Rotary angular frequencies theta^(-2i/K); Llama 3.1's scaling (as transformers'
    _compute_llama3_parameters) per frequency by its wavelength 2 pi / f."""
    out = []
    for f in cfg.rope_theta ** (-np.arange(0, k, 2) / k):
        if cfg.rope_scaling == "llama3":
            wavelength, old = 2 * np.pi / f, cfg.rope_original_positions
            if wavelength > old / cfg.rope_low_freq_factor:
                f = f / cfg.rope_factor
            elif wavelength >= old / cfg.rope_high_freq_factor:
                s = (old / wavelength - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor
                                                                     - cfg.rope_low_freq_factor)
                f = (1 - s) * f / cfg.rope_factor + s * f
        out.append(f)
    return np.asarray(out)


def rope(x, cfg):
    """RoPE (Su et al. 2021) on T x K vectors at positions 0..T-1: channels i and i + K/2
    as one complex number, multiplied by e^(i p f_i)."""
    k = x.shape[-1]
    z = (x[:, :k // 2] + 1j * x[:, k // 2:]) * np.exp(1j * np.arange(len(x))[:, None] * frequencies(k, cfg))
    return np.concatenate([z.real, z.imag], -1)


def attention(q, k, v, allowed, cfg, rotate=False):
    """q: Tq x (H K), k and v: Tk x (G K), allowed: Tq x Tk booleans; heads one at a time,
    query head h reading key/value head h // (H / G) (transformers' repeat_kv)."""
    hd = cfg.head_dim or cfg.d_model // cfg.n_head
    group = cfg.n_head // (cfg.n_kv_head or cfg.n_head)
    out = []
    for h in range(cfg.n_head):
        c, ckv = slice(h * hd, (h + 1) * hd), slice(h // group * hd, (h // group + 1) * hd)
        qh, kh = q[:, c], k[:, ckv]
        if cfg.qk_norm:  # each head's query and key vectors to RMS 1
            qh, kh = rms(qh, cfg.ln_eps), rms(kh, cfg.ln_eps)
        if rotate:
            qh, kh = rope(qh, cfg), rope(kh, cfg)
        s = qh @ kh.T / np.sqrt(hd)
        s = np.where(allowed, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        out.append((w / w.sum(-1, keepdims=True)) @ v[:, ckv])
    return np.concatenate(out, -1)


def gate_heads(y, h, a, cfg):
    """Qiu et al.'s head-wise gate: head j's output times sigmoid(h . W_g[:, j])."""
    if not cfg.attn_gate:
        return y
    gates = 1 / (1 + np.exp(-(h @ a["head_gate"]["w"])))  # T x H
    return y * np.repeat(gates, y.shape[-1] // cfg.n_head, axis=-1)


def self_block(p, x, allowed, cfg, memory=None, memory_allowed=None, values=None):
    """values (T x (G K)): the value embedding, added to v times the layer's gain."""
    qkv_bias = cfg.bias or cfg.qkv_bias
    a, h = p["attn"], ln(p["ln1"], x, cfg)
    q, k, v = np.split(lin(a["qkv"], h, qkv_bias), 3, -1) if "qkv" in a else (lin(a[n], h, qkv_bias) for n in "qkv")
    if cfg.value_embed:
        v = v + a["value_gain"][0] * values
    y = attention(q, k, v, allowed, cfg, rotate=cfg.positions == "rope")
    x = x + lin(a["out"], gate_heads(y, h, a, cfg), cfg.bias)
    if memory is not None:
        c = p["cross"]
        q = lin(c["q"], ln(p["ln_cross"], x, cfg), qkv_bias)
        k, v = np.split(lin(c["kv"], memory, qkv_bias), 2, -1) if "kv" in c else (lin(c[n], memory, qkv_bias)
                                                                                for n in "kv")
        x = x + lin(c["out"], attention(q, k, v, memory_allowed, cfg), cfg.bias)
    m, h = p["mlp"], ln(p["ln2"], x, cfg)
    if "gate" in m:  # a GLU (Shazeer 2020): the activation gates a second projection
        return x + lin(m["down"], activation(lin(m["gate"], h, cfg.bias), cfg) * lin(m["up"], h, cfg.bias), cfg.bias)
    return x + lin(m["proj"], activation(lin(m["fc"], h, cfg.bias), cfg), cfg.bias)


def head(p, x, table, cfg):
    """Logits: x times the token table (tied) or the head's matrix, soft-capped by
    c tanh(logits / c) if cfg.logit_softcap = c > 0."""
    logits = x @ (table.T if cfg.tie_embeddings else p["head"]["w"])
    c = cfg.logit_softcap
    return c * np.tanh(logits / c) if c else logits


def sinusoids(t, d):
    pe = np.zeros((t, d))
    pos = np.arange(t)[:, None]
    rate = 10000.0 ** (np.arange(0, d, 2) / d)
    pe[:, 0::2], pe[:, 1::2] = np.sin(pos / rate), np.cos(pos / rate)
    return pe


LM_CFG = ModelConfig(n_layer=2, n_head=4, d_model=32, d_ff=64, block_size=12, vocab_size=13)
LM_IDS = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, 12), 0, 13))


def lm_reference(p, ids, cfg):
    return np.stack([head(p, h, p["embed"]["tokens"], cfg) for h in lm_hidden(p, ids, cfg)])


def lm_hidden(p, ids, cfg):
    """The final norm's output, B x T x D."""
    causal = np.tril(np.ones((ids.shape[1], ids.shape[1]), bool))
    out = []
    for b in range(len(ids)):
        x = p["embed"]["tokens"][ids[b]]
        if cfg.positions == "learned":  # (rotary positions turn queries and keys in attention instead)
            x = x + p["embed"]["positions"][:ids.shape[1]]
        if cfg.bigram_embed:  # row (previous, current); the first token's previous is "none", row V
            prev = [cfg.vocab_size] + list(ids[b][:-1])
            x = x + np.stack([p["embed"]["bigrams"][a * cfg.vocab_size + c] for a, c in zip(prev, ids[b])])
        values = p["embed"]["values"][ids[b]] if cfg.value_embed else None
        outputs = []  # U-net: layer L-1-i adds layer i's output, weighted, to its input
        n = len(p["blocks"])
        for i, blk in enumerate(p["blocks"]):
            if cfg.unet_skips and i >= n - n // 2:
                x = x + p["skips"][i - (n - n // 2)] * outputs[n - 1 - i]
            x = self_block(blk, x, causal, cfg, values=values)
            outputs.append(x)
        out.append(ln(p["ln_f"], x, cfg))
    return np.stack(out)


def test_lm_logits_match_the_numpy_reference():
    params = _perturbed(init_lm(jax.random.PRNGKey(0), LM_CFG), 1)
    got = np.asarray(lm_forward(params, jnp.asarray(LM_IDS), cfg=LM_CFG)[0])
    np.testing.assert_allclose(got, lm_reference(_np(params), LM_IDS, LM_CFG), rtol=2e-4, atol=2e-4)


def _assert_options_matter(reference, p, cfg, want):
    """Each option of OFF that cfg turns on changes the reference's logits by far more
    than the tolerance, so a model that ignored it would fail."""
    for key, off in OFF.items():
        if getattr(cfg, key) != off:
            other = reference(p, dataclasses.replace(cfg, **{key: off}))
            assert np.abs(other - want).max() > 1e-4, key


@pytest.mark.parametrize("name", OPTIONS)
def test_lm_block_options_match_the_numpy_reference(name):
    cfg = dataclasses.replace(LM_CFG, dtype="float64", **OPTIONS[name])
    with float64():
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _perturbed(init_lm(jax.random.PRNGKey(0), cfg), 1))
        got = np.asarray(lm_forward(params, jnp.asarray(LM_IDS), cfg=cfg)[0])
    p = _np(params)
    want = lm_reference(p, LM_IDS, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    _assert_options_matter(lambda p, c: lm_reference(p, LM_IDS, c), p, cfg, want)
    if cfg.logit_softcap:
        assert np.abs(want).max() > 0.8 * cfg.logit_softcap  # the cap bends the logits, not only scales them


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def mtp_loss_reference(p, ids, cfg):
    """Training's loss sum with DeepSeek-V3's multi-token prediction (sec. 2.2) for windows
    ids[:, :-1] -> ids[:, 1:]: module k at position i projects [norm(h_i); norm(E[t_{i+k}])]
    (h: the module before it, the trunk's normed output for k = 1), runs a block, and
    predicts t_{i+k+1} through its own norm and the shared head, at every i whose target
    is in the window; its token losses are added times mtp_weight / mtp_depth."""
    inputs, targets = ids[:, :-1], ids[:, 1:]
    t, table = inputs.shape[1], p["embed"]["tokens"]
    causal, plain = np.tril(np.ones((t, t), bool)), dataclasses.replace(cfg, value_embed=False)
    total = 0.0
    for b in range(len(ids)):
        h = lm_hidden(p, inputs[b:b + 1], cfg)[0]
        total -= log_softmax(head(p, h, table, cfg))[np.arange(t), targets[b]].sum()
        for k, m in enumerate(p["mtp"]["blocks"], 1):
            ahead = np.concatenate([targets[b, k - 1:], np.zeros(k - 1, int)])  # t_{i+k}; past the window: 0
            x = np.concatenate([ln(m["ln_h"], h, cfg), ln(m["ln_e"], table[ahead], cfg)], -1) @ m["proj"]["w"]
            h = self_block(m, x, causal, plain)
            logp = log_softmax(head(p, ln(m["ln_f"], h, cfg), table, cfg))
            total -= cfg.mtp_weight / cfg.mtp_depth * logp[np.arange(t - k), targets[b, k:]].sum()
    return total


MTP_IDS = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (2, 13), 0, 13))


@pytest.mark.parametrize("name,over", [
    ("one", dict(mtp_depth=1)),
    ("two", dict(mtp_depth=2, mtp_weight=0.5)),
    ("record", dict(mtp_depth=2, norm="rmsnorm", positions="rope", value_embed=True, unet_skips=True,
                    attn_gate=True, tie_embeddings=False, activation="relu2")),
])
def test_multi_token_prediction_loss_matches_the_numpy_reference(name, over):
    """The training loss with model.mtp_depth modules; evaluation's loss and the logits are
    the model's without them (whatever their weights)."""
    cfg = dataclasses.replace(LM_CFG, dtype="float64", **over)
    batch = {"inputs": jnp.asarray(MTP_IDS[:, :-1]), "targets": jnp.asarray(MTP_IDS[:, 1:])}
    with float64():
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _perturbed(init_lm(jax.random.PRNGKey(0), cfg), 1))
        s, w = lm_loss(params, batch, cfg=cfg, train=True)
        plain, _ = lm_loss(params, batch, cfg=cfg)
        other = {**params, "mtp": _perturbed(params["mtp"], 7)}
        logits, _ = lm_forward(params, batch["inputs"], cfg=cfg)
        other_logits, _ = lm_forward(other, batch["inputs"], cfg=cfg)
    p = _np(params)
    want = mtp_loss_reference(p, MTP_IDS, cfg)
    assert float(w) == MTP_IDS[:, 1:].size
    np.testing.assert_allclose(float(s), want, rtol=1e-9)
    np.testing.assert_allclose(float(plain), mtp_loss_reference(p, MTP_IDS, dataclasses.replace(cfg, mtp_weight=0.0)),
                               rtol=1e-9)
    assert abs(float(s) - float(plain)) > 1e-3 * abs(want)  # the modules' losses count
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(other_logits))


ED_CFG = ModelConfig(n_layer=2, n_head=2, d_model=16, d_ff=48, block_size=9, vocab_size=11, positions="sinusoidal")
SRC = np.asarray([[5, 6, 7, 8, 9, PAD_ID, PAD_ID], [4, 10, 3, 9, 8, 7, 6]])
TGT = np.asarray([[1, 9, 8, 7, 6, 5, 2, 0, 0], [1, 6, 7, 8, 9, 3, 10, 4, 2]])


def encdec_reference(p, src, tgt, cfg):
    # Tied: source, target and output share one table; untied: "src", "tgt" and the head.
    src_table, tgt_table = (p["embed"]["tokens"],) * 2 if cfg.tie_embeddings else (p["embed"]["src"],
                                                                                    p["embed"]["tgt"])
    d, s, t = cfg.d_model, src.shape[1], tgt.shape[1]
    pe = sinusoids(cfg.block_size, d)
    out = []
    for b in range(len(src)):
        valid = src[b] != PAD_ID
        x = src_table[src[b]] * np.sqrt(d) + pe[:s]
        for blk in p["encoder"]["blocks"]:
            x = self_block(blk, x, np.broadcast_to(valid, (s, s)), cfg)
        memory = ln(p["encoder"]["ln_f"], x, cfg)
        y = tgt_table[tgt[b]] * np.sqrt(d) + pe[:t]
        for blk in p["decoder"]["blocks"]:
            y = self_block(blk, y, np.tril(np.ones((t, t), bool)), cfg, memory, np.broadcast_to(valid, (t, s)))
        out.append(head(p, ln(p["decoder"]["ln_f"], y, cfg), tgt_table, cfg))
    return np.stack(out)


def test_encoder_decoder_logits_match_the_numpy_reference():
    params = _perturbed(init_encdec(jax.random.PRNGKey(3), ED_CFG), 4)
    got = np.asarray(encdec_forward(params, jnp.asarray(SRC), jnp.asarray(TGT), cfg=ED_CFG))
    np.testing.assert_allclose(got, encdec_reference(_np(params), SRC, TGT, ED_CFG), rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", ["qk_norm", "untied", "all", "swiglu", "qkv_bias", "mqa"])
def test_encoder_decoder_block_options_match_the_numpy_reference(name):
    """QK-norm reaches the cross-attention's queries and keys too; the untied model has
    its own source, target and output matrices; the cross-attention's keys and values
    have as few heads as the self-attention's (mqa: both heads read one)."""
    cfg = dataclasses.replace(ED_CFG, dtype="float64", **OPTIONS[name])
    with float64():
        params = jax.tree.map(lambda a: a.astype(jnp.float64), _perturbed(init_encdec(jax.random.PRNGKey(3), cfg), 4))
        got = np.asarray(encdec_forward(params, jnp.asarray(SRC), jnp.asarray(TGT), cfg=cfg))
    p = _np(params)
    want = encdec_reference(p, SRC, TGT, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # the model's sinusoid table is float32
    _assert_options_matter(lambda p, c: encdec_reference(p, SRC, TGT, c), p, cfg, want)
