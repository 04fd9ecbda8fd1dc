"""Why cached sampling is slower than its weight-streaming floor on XLA's CPU backend.

Three measurements at the bench's gpt-small decoding shapes (width 384, 6 layers,
weights stored W^T as the sampler keeps them), each a jitted `fori_loop` of one-token
steps, median of 5 runs, in microseconds per step:

  1. rows: W^T x over ~42.5 MB of same-shape 384-column matrices, for several row
     counts. XLA's CPU backend splits a matrix-vector product across threads only
     above about 2^19 elements; below it the product streams on one core.
  2. floor: the 24 products of a decoding step (qkv 1152 x 384, out 384 x 384, fc, proj),
     with the QKV matrix as is and padded with zero rows to 1,368 (just over 2^19).
  3. attention: the padded floor plus attention of one query over an S-slot KV cache
     per layer (6 heads of 64), for several S, and the unpadded floor with the largest
     S. On its own that attention is cheap; in the padded loop it costs far more.
  4. working set: W^T x over 7 to 56 MB of matrices per step. A matrix-vector product
     streams about twice as fast while the matrices fit the 32 MB L3 as once they
     do not; a decoding step reads 42.5 MB of weights plus a 4.7 MB KV cache.
     Attention alone over 256 slots, with the cache in the L3 (one cache set, read
     every step) and out of it (8 sets, 37.7 MB, read in turn; us per 6 layers).

    python benchmarks/decode_threads.py          # about a minute on the 2-core development machine

BENCHMARKS.md ("Targets": why cached sampling stays below 20x) reads its numbers.
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp

from scratchformer.bench import _timed

D, H, STEPS = 384, 6, 300


def _us_per_step(fn, *args, reps: int = 5) -> float:
    fn(*args).block_until_ready()  # compile
    return statistics.median(_timed(lambda: fn(*args).block_until_ready()) for _ in range(reps)) / STEPS * 1e6


def _randn(i: int, shape):
    return 0.03 * jax.random.normal(jax.random.PRNGKey(i), shape, jnp.float32)


@jax.jit
def _product_chain(mats, x):
    def body(_, x):
        for w in mats:
            x = x + jnp.tanh(w @ x)[:D]
        return x
    return jax.lax.fori_loop(0, STEPS, body, x)


def rows_sweep(rows_list=(384, 768, 1152, 1280, 1408, 1536, 2048), total_bytes: float = 42.5e6):
    print("1. W^T x, 384 columns, ~42.5 MB of matrices per step")
    for rows in rows_list:
        n = max(1, round(total_bytes / (rows * D * 4)))
        us = _us_per_step(_product_chain, [_randn(i, (rows, D)) for i in range(n)], jnp.ones((D,), jnp.float32))
        mb = n * rows * D * 4 / 1e6
        print(f"   {rows:5d} rows x {n:2d} matrices ({mb:4.1f} MB): {us:6.0f} us/step, {mb / us * 1e3:5.1f} GB/s")


def _step_weights():
    return [(_randn(10 * i, (3 * D, D)), _randn(10 * i + 1, (D, D)), _randn(10 * i + 2, (4 * D, D)),
             _randn(10 * i + 3, (D, 4 * D))) for i in range(6)]


def _padded(layers, qkv_rows: int):
    """The same weights with zero rows appended to each QKV matrix."""
    return [(jnp.pad(qkv, ((0, qkv_rows - qkv.shape[0]), (0, 0))), *rest) for qkv, *rest in layers]


def _step_loop(slots: int):
    """A decoding step's weight products; with slots > 0 also attention over a KV cache
    in the sampler's layouts (keys N x K x S, values N x S x K)."""
    @jax.jit
    def run(layers, caches, x):
        def body(_, x):
            for (qkv, out, fc, proj), (k_NxKxS, v_NxSxK) in zip(layers, caches):
                a = (qkv @ x)[:3 * D]
                y = a[:D]
                if slots:
                    s = jnp.einsum("nqk,nks->nqs", y.reshape(H, 1, D // H), k_NxKxS)
                    p = jax.nn.softmax(s, axis=-1)
                    y = jnp.einsum("nqs,nsk->nqk", p, v_NxSxK).reshape(D) + a[D:2 * D]
                x = x + out @ y
                x = x + proj @ jnp.maximum(fc @ x, 0.0)
            return x / jnp.linalg.norm(x)
        return jax.lax.fori_loop(0, STEPS, body, x)
    return run


def _caches(slots: int, seed: int = 0):
    s = max(slots, 1)
    return [(_randn(seed + 100 + i, (H, D // H, s)), _randn(seed + 200 + i, (H, s, D // H))) for i in range(6)]


def floor_and_attention(slots_list=(16, 64, 128, 192, 256), rounds: int = 2):
    x = jnp.ones((D,), jnp.float32)
    plain_w = _step_weights()
    padded_w = _padded(plain_w, 1368)
    loops = {s: _step_loop(s) for s in (0, *slots_list)}
    caches = {s: _caches(s) for s in (0, *slots_list)}
    big = slots_list[-1]
    print("2. a decoding step's 24 weight products (us/step), QKV 1,152 rows vs padded to 1,368")
    print("3. with attention over S cache slots per layer")
    for r in range(rounds):
        plain = _us_per_step(loops[0], plain_w, caches[0], x)
        padded = _us_per_step(loops[0], padded_w, caches[0], x)
        att = {s: _us_per_step(loops[s], padded_w, caches[s], x) for s in slots_list}
        plain_att = _us_per_step(loops[big], plain_w, caches[big], x)
        print(f"   round {r + 1}: floor {plain:4.0f}, padded {padded:4.0f}; padded with attention: "
              + ", ".join(f"S={s} {t:4.0f}" for s, t in att.items())
              + f"; unpadded with attention, S={big}: {plain_att:4.0f}")


def working_set_sweep(sizes_mb=(7, 14, 21, 28, 35, 42.5, 56), rows_list=(1152, 1536)):
    print("4. W^T x, 384 columns, by megabytes of matrices per step (GB/s)")
    for rows in rows_list:
        rates = []
        for mb in sizes_mb:
            n = max(1, round(mb * 1e6 / (rows * D * 4)))
            us = _us_per_step(_product_chain, [_randn(i, (rows, D)) for i in range(n)], jnp.ones((D,), jnp.float32))
            rates.append(f"{n * rows * D * 4 / 1e6:4.1f} MB {n * rows * D * 4 / 1e3 / us:5.1f}")
        print(f"   {rows:5d} rows: " + ", ".join(rates))


def attention_alone(slots: int = 256, sets_list=(1, 8)) -> None:
    @jax.jit
    def run(caches, x):
        def body(_, x):
            for k_NxKxS, v_NxSxK in caches:
                p = jax.nn.softmax(jnp.einsum("nqk,nks->nqs", x.reshape(H, 1, D // H), k_NxKxS), axis=-1)
                x = x + jnp.einsum("nqs,nsk->nqk", p, v_NxSxK).reshape(D)
            return x / jnp.linalg.norm(x)
        return jax.lax.fori_loop(0, STEPS, body, x)

    for sets in sets_list:
        caches = [c for i in range(sets) for c in _caches(slots, seed=1000 * i)]
        mb = sets * 6 * 2 * H * (D // H) * slots * 4 / 1e6
        us = _us_per_step(run, caches, jnp.ones((D,))) / sets
        print(f"   attention alone over {slots} slots, {sets} cache set(s) ({mb:4.1f} MB): {us:.0f} us per 6 layers")


if __name__ == "__main__":
    rows_sweep()
    floor_and_attention()
    working_set_sweep()
    attention_alone()
