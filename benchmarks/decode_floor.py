"""How close cached sampling is to this machine's limit for one token at a time.

Times, in one process, at the bench's gpt-small shape (6 layers, width 384):
  * floor: a jitted loop doing nothing but the 24 weight matrix-vector products of
    one decoding step (qkv, out, fc, proj per layer: 42.5 MB of f32 weights read per
    token) plus a residual add, 1,000 times;
  * cached: scratchformer's sampler (KV cache, temperature 0.8), 1,000 tokens;
  * uncached: the same without the cache (a full forward over the window per token).
and prints ms/token for each and the ratio uncached/floor: the largest cached
speed-up any implementation could show with f32 weights on this machine.

    python benchmarks/decode_floor.py
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from scratchformer.bench import SHAPES, VOCAB
from scratchformer.config import make_config
from scratchformer.decode import generate
from scratchformer.models import init_lm

N = 1000


def floor_ms(params) -> float:
    mats = [(b["attn"]["qkv"]["w"], b["attn"]["out"]["w"], b["mlp"]["fc"]["w"], b["mlp"]["proj"]["w"])
            for b in params["blocks"]]
    d = mats[0][1].shape[0]

    @jax.jit
    def run(mats, x):
        def body(_, x):
            for qkv, out, fc, proj in mats:
                x = x + (x @ qkv)[:, :d] @ out
                x = x + jnp.maximum(x @ fc, 0.0) @ proj
            return x / jnp.linalg.norm(x)
        return jax.lax.fori_loop(0, N, body, x)

    x = jnp.ones((1, d), jnp.float32)
    run(mats, x).block_until_ready()
    return _median_ms(lambda: run(mats, x).block_until_ready())


def _median_ms(fn, reps=3) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) / N * 1e3


def main():
    cfg = replace(make_config("lm", "cpu", SHAPES["gpt-small"]).model, vocab_size=VOCAB, dropout=0.0)
    params = init_lm(jax.random.PRNGKey(0), cfg)
    n_bytes = sum(int(np.prod(b[k][n]["w"].shape)) * 4 for b in params["blocks"]
                  for k, n in (("attn", "qkv"), ("attn", "out"), ("mlp", "fc"), ("mlp", "proj")))
    prompt = np.zeros((1,), np.int32)
    out = {"floor": floor_ms(params)}
    for label, cache in (("cached", True), ("uncached", False)):
        generate(params, cfg, prompt, N, use_cache=cache)
        out[label] = _median_ms(lambda: generate(params, cfg, prompt, N, use_cache=cache))
    print(f"weights read per token: {n_bytes / 1e6:.1f} MB")
    for k, v in out.items():
        print(f"{k:>9}: {v:.3f} ms/token")
    print(f"cached speed-up {out['uncached'] / out['cached']:.1f}x; at the floor it would be "
          f"{out['uncached'] / out['floor']:.1f}x; the floor is {100 * out['floor'] / out['cached']:.0f}% of a cached step")


if __name__ == "__main__":
    main()
