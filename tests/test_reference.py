"""Both models' logits against a float64 numpy reference written from the papers'
equations (GPT-2's pre-LN decoder; Vaswani et al.'s encoder-decoder with sinusoidal
positions, here pre-LN too), sharing nothing with the package but the parameter names.
The parameters are perturbed so that every bias and gain matters."""

import jax
import jax.numpy as jnp
import numpy as np

from scratchformer.config import ModelConfig
from scratchformer.models import PAD_ID, encdec_forward, init_encdec, init_lm, lm_forward


def _perturbed(params, seed):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _np(params):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), params)


def ln(p, x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x):  # GPT-2's tanh form
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def attention(q, k, v, allowed, n_head):
    """q: Tq x D, k and v: Tk x D, allowed: Tq x Tk booleans; heads one at a time."""
    hd = q.shape[-1] // n_head
    out = []
    for h in range(n_head):
        c = slice(h * hd, (h + 1) * hd)
        s = q[:, c] @ k[:, c].T / np.sqrt(hd)
        s = np.where(allowed, s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        out.append((w / w.sum(-1, keepdims=True)) @ v[:, c])
    return np.concatenate(out, -1)


def self_block(p, x, allowed, n_head, memory=None, memory_allowed=None):
    q, k, v = np.split(ln(p["ln1"], x) @ p["attn"]["qkv"]["w"] + p["attn"]["qkv"]["b"], 3, -1)
    x = x + attention(q, k, v, allowed, n_head) @ p["attn"]["out"]["w"] + p["attn"]["out"]["b"]
    if memory is not None:
        c = p["cross"]
        q = ln(p["ln_cross"], x) @ c["q"]["w"] + c["q"]["b"]
        k, v = np.split(memory @ c["kv"]["w"] + c["kv"]["b"], 2, -1)
        x = x + attention(q, k, v, memory_allowed, n_head) @ c["out"]["w"] + c["out"]["b"]
    h = gelu(ln(p["ln2"], x) @ p["mlp"]["fc"]["w"] + p["mlp"]["fc"]["b"])
    return x + h @ p["mlp"]["proj"]["w"] + p["mlp"]["proj"]["b"]


def sinusoids(t, d):
    pe = np.zeros((t, d))
    pos = np.arange(t)[:, None]
    rate = 10000.0 ** (np.arange(0, d, 2) / d)
    pe[:, 0::2], pe[:, 1::2] = np.sin(pos / rate), np.cos(pos / rate)
    return pe


def test_lm_logits_match_the_numpy_reference():
    cfg = ModelConfig(n_layer=2, n_head=4, d_model=32, d_ff=64, block_size=12, vocab_size=13)
    params = _perturbed(init_lm(jax.random.PRNGKey(0), cfg), 1)
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (3, 12), 0, 13))
    got = np.asarray(lm_forward(params, jnp.asarray(ids), cfg=cfg)[0])

    p = _np(params)
    causal = np.tril(np.ones((12, 12), bool))
    for b in range(3):
        x = p["embed"]["tokens"][ids[b]] + p["embed"]["positions"][:12]
        for blk in p["blocks"]:
            x = self_block(blk, x, causal, cfg.n_head)
        want = ln(p["ln_f"], x) @ p["embed"]["tokens"].T  # the output head tied to the table
        np.testing.assert_allclose(got[b], want, rtol=2e-4, atol=2e-4)


def test_encoder_decoder_logits_match_the_numpy_reference():
    cfg = ModelConfig(n_layer=2, n_head=2, d_model=16, d_ff=48, block_size=9, vocab_size=11,
                      positions="sinusoidal")
    params = _perturbed(init_encdec(jax.random.PRNGKey(3), cfg), 4)
    src = np.asarray([[5, 6, 7, 8, 9, PAD_ID, PAD_ID], [4, 10, 3, 9, 8, 7, 6]])
    tgt = np.asarray([[1, 9, 8, 7, 6, 5, 2, 0, 0], [1, 6, 7, 8, 9, 3, 10, 4, 2]])
    got = np.asarray(encdec_forward(params, jnp.asarray(src), jnp.asarray(tgt), cfg=cfg))

    p = _np(params)
    table, d = p["embed"]["tokens"], cfg.d_model  # source, target and output share one table
    pe = sinusoids(cfg.block_size, d)
    for b in range(2):
        valid = src[b] != PAD_ID
        x = table[src[b]] * np.sqrt(d) + pe[:7]
        for blk in p["encoder"]["blocks"]:
            x = self_block(blk, x, np.broadcast_to(valid, (7, 7)), cfg.n_head)
        memory = ln(p["encoder"]["ln_f"], x)
        y = table[tgt[b]] * np.sqrt(d) + pe[:9]
        for blk in p["decoder"]["blocks"]:
            y = self_block(blk, y, np.tril(np.ones((9, 9), bool)), cfg.n_head, memory, np.broadcast_to(valid, (9, 7)))
        want = ln(p["decoder"]["ln_f"], y) @ table.T
        np.testing.assert_allclose(got[b], want, rtol=2e-4, atol=2e-4)
