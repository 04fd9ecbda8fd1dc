"""`gumbel(key, n)`: `jax.random.gumbel(key, (n,), jnp.float32)`, bit for bit, computed as
elementwise ops that XLA fuses into one loop.

Why not jax.random.gumbel itself: on a CPU, jax.random lowers its Threefry-2x32 generator
(Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3") as a rolled loop of
five steps, each a round of small ops over the whole vector, and the sampler draws a
vocabulary's worth of noise every token. On a 2-core AMD EPYC (AVX-512, JAX 0.10.2), the
cached sampler (decode.generate, temperature 0.8) with jax.random.gumbel made 0.77-0.80x
the tokens/s it makes with this at GPT-2's vocabulary of 50,257 (a 2 x 128 model,
T=256, 500 tokens; pairwise medians of 12-16 runs alternating in one process, three
rounds, the machine loaded); at the 65 characters of `bench`'s 6 x 384 sampling
model, 0.99-1.05x (no difference). The noise and the pick alone at 50,257: 520-560 us a
token with jax.random.gumbel, 290-330 with this (fastest of 9).

The bits are jax.random's with `jax_threefry_partitionable` on, its default since JAX
0.5 (tests/test_gumbel.py compares them).

Shape legend: N vector length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

U32 = jnp.uint32


def _rotate_left(x, r: int):
    return (x << U32(r)) | (x >> U32(32 - r))


def threefry2x32(key1, key2, x1, x2):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011, as jax.random computes it): the
    pair of uint32 counters (x1, x2) hashed under the key (key1, key2), elementwise."""
    ks = (key1, key2, key1 ^ key2 ^ U32(0x1BD11BDA))
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for j in range(5):  # five groups of four rounds, each followed by a key injection
        for r in rotations[j % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, r) ^ x1
        x1 = x1 + ks[(j + 1) % 3]
        x2 = x2 + ks[(j + 2) % 3] + U32(j + 1)
    return x1, x2


def gumbel(key, n: int):
    """`jax.random.gumbel(key, (n,), jnp.float32)` as a float32 vector N (n < 2^32), for
    a raw threefry key (uint32[2], as jax.random.PRNGKey and fold_in give)."""
    j = jnp.arange(n, dtype=U32)
    b1, b2 = threefry2x32(key[0], key[1], jnp.zeros_like(j), j)  # element j's counter is (0, j)
    bits = b1 ^ b2                                               # jax.random's 32 bits from a counter pair
    # jax.random.uniform(minval=tiny, maxval=1) from those bits: 23 of them as the mantissa
    # of a float in [1, 2), less 1; then jax.random.gumbel's -log(-log(u)).
    u = jax.lax.bitcast_convert_type((bits >> U32(9)) | U32(0x3F800000), jnp.float32) - jnp.float32(1)
    tiny = jnp.float32(np.finfo(np.float32).tiny)
    u = jnp.maximum(tiny, u * (jnp.float32(1) - tiny) + tiny)
    return -jnp.log(-jnp.log(u))
