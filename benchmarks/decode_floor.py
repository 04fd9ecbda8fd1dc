"""How close cached sampling is to this machine's limit for one token at a time.

Times, in one process, at the bench's gpt-small shape (6 layers, width 384):
  * floor: a jitted loop doing nothing but the 24 weight matrix-vector products of
    one decoding step (qkv, out, fc, proj per layer: 42.5 MB of f32 weights read per
    token) plus a residual add, 1,000 times, with the weights stored transposed as the
    sampler keeps them for its one-token steps (W^T x; `kernels.transposed_weights`),
    and again as x W (the training layout) for comparison;
  * cached: scratchformer's sampler (KV cache, temperature 0.8), 1,000 tokens, timed by
    the bench's own bench_sample;
  * uncached: the same without the cache (a full forward over the window per token).
and prints ms/token for each and the ratio uncached/floor: the largest cached
speed-up any implementation could show with f32 weights on this machine.

    python benchmarks/decode_floor.py
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

from scratchformer.bench import _timed, bench_sample, sampling_model

N = 1000


def step_weights(params):
    """Per layer, the four weight matrices a decoding step multiplies by: qkv, out, fc, proj."""
    return [(b["attn"]["qkv"]["w"], b["attn"]["out"]["w"], b["mlp"]["fc"]["w"], b["mlp"]["proj"]["w"])
            for b in params["blocks"]]


def floor_ms(mats, reps: int = 3, *, transposed: bool = True) -> float:
    d = mats[0][1].shape[0]
    if transposed:
        mats = [tuple(w.T.copy() for w in layer) for layer in mats]
    mv = (lambda x, w_t: w_t @ x) if transposed else (lambda x, w: x @ w)

    @jax.jit
    def run(mats, x):
        def body(_, x):
            for qkv, out, fc, proj in mats:
                x = x + mv(mv(x, qkv)[:d], out)
                x = x + mv(jnp.maximum(mv(x, fc), 0.0), proj)
            return x / jnp.linalg.norm(x)
        return jax.lax.fori_loop(0, N, body, x)

    x = jnp.ones((d,), jnp.float32)
    run(mats, x).block_until_ready()
    times = [_timed(lambda: run(mats, x).block_until_ready()) for _ in range(reps)]
    return statistics.median(times) / N * 1e3


def main():
    mats = step_weights(sampling_model()[1])
    n_bytes = sum(m.nbytes for layer in mats for m in layer)
    s = bench_sample(n_tokens=N, reps=3)
    out = {"floor": floor_ms(mats), "floor x W": floor_ms(mats, transposed=False),
           "cached": 1e3 / s["cached_tokens_per_s"], "uncached": 1e3 / s["uncached_tokens_per_s"]}
    print(f"weights read per token: {n_bytes / 1e6:.1f} MB")
    for k, v in out.items():
        print(f"{k:>10}: {v:.3f} ms/token")
    print(f"cached speed-up {out['uncached'] / out['cached']:.1f}x; at the floor it would be "
          f"{out['uncached'] / out['floor']:.1f}x; the floor is "
          f"{100 * out['floor'] / out['cached']:.0f}% of a cached step")


if __name__ == "__main__":
    main()
