"""The reversal experiment at a reduced size: learns to 100% exact match, and the
decoders agree with each other (beam 1 = greedy, cached = uncached) and with an
exhaustive search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchformer.data import reverse
from scratchformer.decode import beam_search, greedy, seq2seq_accuracy
from scratchformer.loop import fit
from scratchformer.runconfig import make_config
from scratchformer.tasks import ReverseTask

from conftest import as_multi_head

SMALL = {"data.max_len": 8, "model.block_size": 10, "data.eval_size": 1000, "train.steps": 600,
         "train.eval_every": 300, "train.checkpoint_every": 600, "train.batch_size": 64,
         "optim.warmup_steps": 50, "train.steps_per_call": 50}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = make_config("reverse", None, SMALL)
    task = ReverseTask(cfg)
    out = tmp_path_factory.mktemp("rev")
    summary = fit(task, out, progress=False)
    from scratchformer import runs
    task, params, _ = runs.load(out)
    return summary, task, params, out


def test_examples_are_reversals():
    lengths = np.array([3, 1, 5])
    syms = np.array([[4, 2, 7, 0, 0], [9, 9, 9, 9, 9], [1, 2, 3, 4, 5]])
    b = {k: np.asarray(v) for k, v in reverse.make_examples(lengths, jnp.asarray(syms)).items()}
    for i, n in enumerate(lengths):
        src = [t - reverse.OFFSET for t in b["src"][i][:n]]
        assert src == syms[i][:n].tolist() and (b["src"][i][n:] == reverse.PAD).all()
        assert b["tgt_out"][i][:n].tolist() == b["src"][i][:n][::-1].tolist()
        assert b["tgt_out"][i][n] == reverse.EOS and (b["tgt_out"][i][n + 1:] == reverse.PAD).all()
        assert b["tgt_in"][i][0] == reverse.BOS and b["tgt_in"][i][1:n + 1].tolist() == b["tgt_out"][i][:n].tolist()


def test_eval_set_is_fixed_and_separate_from_training_draws():
    a = reverse.eval_set(size=50, seed=1234, n_symbols=20, min_len=1, max_len=20)
    b = reverse.eval_set(size=50, seed=1234, n_symbols=20, min_len=1, max_len=20)
    np.testing.assert_array_equal(a["src"], b["src"])
    lengths = (a["src"] != reverse.PAD).sum(1)
    assert lengths.min() >= 1 and lengths.max() <= 20


def test_reduced_run_reaches_100_percent(trained):
    summary, *_ = trained
    assert summary["exact_match"] == 1.0, summary
    assert summary["sequences"] == 1000


def test_beam_one_equals_greedy_and_cache_changes_nothing(trained):
    _, task, params, _ = trained
    cfg = task.cfg.model
    src = jnp.asarray(task.eval_set()["src"][:200])
    g = np.asarray(greedy(params, src, cfg=cfg, max_out=9))
    g_nocache = np.asarray(greedy(params, src, cfg=cfg, max_out=9, use_cache=False))
    b1 = np.asarray(beam_search(params, src, cfg=cfg, max_out=9, beam=1))
    np.testing.assert_array_equal(g, g_nocache)
    np.testing.assert_array_equal(g, b1)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cache_equals_no_cache_on_an_untrained_model(positions):
    """Where outputs are not the clean reversal (random weights), cached decoding still
    reproduces uncached decoding token for token."""
    from scratchformer.models import init_encdec
    cfg = ReverseTask(make_config("reverse", None, {**SMALL, "model.positions": positions})).cfg.model
    params = init_encdec(jax.random.PRNGKey(3), cfg)
    src = jnp.asarray(reverse.eval_set(size=64, seed=5, n_symbols=20, min_len=1, max_len=8)["src"])
    np.testing.assert_array_equal(np.asarray(greedy(params, src, cfg=cfg, max_out=9)),
                                  np.asarray(greedy(params, src, cfg=cfg, max_out=9, use_cache=False)))


GQA = {"model.n_kv_head": 2, "model.fused_qkv": False, "model.activation": "swiglu", "model.bias": False,
       "model.qkv_bias": True}  # of the default preset's 4 heads


@pytest.mark.parametrize("positions,more", [("learned", {}), ("rope", {}), ("rope", GQA)], ids=["learned", "rope",
                                                                                               "rope-gqa"])
def test_block_options_cache_equals_no_cache_and_beam_one_equals_greedy(positions, more):
    """The encoder-decoder with RMSNorm, QK-norm (in cross-attention too: the memory's keys
    are normalised once), exact GELU (or SwiGLU with grouped-query attention and biases
    on q, k, v only), a soft-capped untied head: it builds and decodes, and its cached
    decoders reproduce the uncached one. Weights scaled up (as in test_sampling.py) so
    that decisions are not near-ties."""
    from scratchformer.models import init_encdec
    cfg = ReverseTask(make_config("reverse", None, {
        **SMALL, "model.positions": positions, "model.norm": "rmsnorm", "model.qk_norm": True,
        "model.activation": "gelu", "model.logit_softcap": 2.0, "model.tie_embeddings": False, **more})).cfg.model
    params = jax.tree.map(lambda a: a * 4.0 if a.ndim == 2 else a, init_encdec(jax.random.PRNGKey(3), cfg))
    assert set(params["decoder"]["blocks"][0]["ln_cross"]) == {"scale"} and "head" in params
    src = jnp.asarray(reverse.eval_set(size=64, seed=5, n_symbols=20, min_len=1, max_len=8)["src"])
    g = np.asarray(greedy(params, src, cfg=cfg, max_out=9))
    np.testing.assert_array_equal(g, np.asarray(greedy(params, src, cfg=cfg, max_out=9, use_cache=False)))
    np.testing.assert_array_equal(g, np.asarray(beam_search(params, src, cfg=cfg, max_out=9, beam=1)))
    assert len({tuple(row) for row in g}) > 1  # other sources, other outputs
    if cfg.kv_heads < cfg.n_head:  # beams reorder the caches' rows of key/value heads: as the multi-head model's
        wide, wide_cfg = as_multi_head(params, cfg)
        np.testing.assert_array_equal(np.asarray(beam_search(params, src, cfg=cfg, max_out=9, beam=3)),
                                      np.asarray(beam_search(wide, src, cfg=wide_cfg, max_out=9, beam=3)))


def test_beam_search_is_exact_too(trained):
    _, task, params, _ = trained
    ev = {k: v[:300] for k, v in task.eval_set().items()}
    r = seq2seq_accuracy(params, task.cfg.model, ev, beam=4, chunk=300)
    assert r["exact_match"] == 1.0



def test_beam_search_wide_enough_finds_the_exhaustive_best():
    """With a beam wider than the number of hypotheses, beam search must return the
    best of all of them. Every output of up to 3 tokens over a 5-token vocabulary
    (2 symbols, PAD, BOS, EOS; EOS only last, or no EOS within 3 tokens) is scored by
    the teacher-forced forward pass in float64 and ranked by log p / len^alpha, for
    four random models, six sources and three alphas (which pick different winners)."""
    import itertools

    from scratchformer.models import encdec_forward, init_encdec
    cfg = ReverseTask(make_config("reverse", None, {"data.vocab_size": 2, "data.max_len": 2,
                                                    "model.block_size": 4})).cfg.model
    v, max_out = cfg.vocab_size, 3
    assert v == 5
    hyps = [list(h) for n in range(1, max_out + 1) for h in itertools.product(range(v), repeat=n)
            if (h[-1] == reverse.EOS or n == max_out) and reverse.EOS not in h[:-1]]
    lengths = np.array([len(h) for h in hyps])
    srcs = np.array([[3, 4], [4, 3], [3, 0], [4, 4], [3, 3], [4, 0]], np.int32)  # symbols are 3, 4; PAD 0
    tgt_in = np.array([[reverse.BOS] + h[:-1] + [reverse.PAD] * (max_out - len(h)) for h in hyps], np.int32)
    alphas = (0.0, 0.6, 2.0)
    winners, checked = {a: [] for a in alphas}, 0
    for seed, scale in [(0, 0.5), (2, 0.5), (2, 1.0), (4, 1.0)]:
        params = init_encdec(jax.random.PRNGKey(7 + seed), cfg)
        leaves, tree = jax.tree.flatten(params)  # sharper distributions than at initialisation
        keys = jax.random.split(jax.random.PRNGKey(8 + seed), len(leaves))
        params = jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
        for alpha in alphas:
            found = np.asarray(beam_search(params, jnp.asarray(srcs), cfg=cfg, max_out=max_out, beam=128,
                                           alpha=alpha))
            for src, got in zip(srcs, found):
                logits = np.asarray(encdec_forward(params, jnp.asarray(np.repeat(src[None], len(hyps), 0)),
                                                   jnp.asarray(tgt_in), cfg=cfg), np.float64)
                logp = logits - logits.max(-1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
                total = np.array([sum(logp[i, t, tok] for t, tok in enumerate(h)) for i, h in enumerate(hyps)])
                score = total / lengths ** alpha
                first, second = np.argsort(-score)[:2]
                winners[alpha].append(first)
                if score[first] - score[second] < 1e-4:
                    continue  # a near-tie, which float32 may break either way
                checked += 1
                best = hyps[first]
                assert got.tolist() == best + [reverse.PAD] * (max_out - len(best)), (seed, alpha, src, got, best)
    assert checked >= 60
    assert winners[0.0] != winners[0.6] != winners[2.0]  # the test can tell the length normalisation apart


def test_output_symbols_and_note_say_how_an_output_ended():
    E, P, B, o = reverse.EOS, reverse.PAD, reverse.BOS, reverse.OFFSET
    cases = [([o + 7, o + 3, E, P], [7, 3], None),
             ([E, P, P], [], "the output is empty: the model emitted EOS first"),
             ([o + 1, o + 1, o + 1], [1, 1, 1], "no EOS within the 3 output tokens; the output stops there"),
             ([o + 4, P, P], [4], "the output ended with a PAD token after 1 symbol(s), which a trained model "
                                  "does not emit"),
             ([B, E], [], "the output ended with a BOS token after 0 symbol(s), which a trained model does not emit")]
    for ids, symbols, note in cases:
        assert reverse.output_symbols(np.array(ids)) == symbols
        assert reverse.output_note(np.array(ids)) == note


def test_wide_beams_decode_in_smaller_chunks_with_the_same_result(trained, monkeypatch):
    """At most BEAM_HYPOTHESES hypotheses per call (a wide beam would otherwise hold
    1,000 x beam KV caches at once); the chunking changes nothing in the result."""
    from scratchformer import decode
    _, task, params, _ = trained
    ev = {k: v[:200] for k, v in task.eval_set().items()}
    whole = decode.seq2seq_accuracy(params, task.cfg.model, ev, beam=16, chunk=200)
    monkeypatch.setattr(decode, "BEAM_HYPOTHESES", 16 * 48)
    sizes, real = [], decode.seq2seq_decode
    monkeypatch.setattr(decode, "seq2seq_decode", lambda p, c, src, beam: sizes.append(len(src)) or real(p, c, src,
                                                                                                       beam=beam))
    decoded = []
    assert decode.seq2seq_accuracy(params, task.cfg.model, ev, beam=16, chunk=200, on_decoded=decoded.append) == whole
    assert sizes == [48] * 5  # 200 sequences in chunks of 48, the last one padded
    assert decoded == [48, 48, 48, 48, 8]  # what a progress bar hears: the real sequences of each call
