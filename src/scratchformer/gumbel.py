"""Gumbel noise for sampling, one token's row at a time.

`gumbel_row(key, i, n)` is row i of `jax.random.gumbel(key, (rows, n))`, bit for bit and
for any number of rows > i. jax.random's Threefry-2x32 generator (Salmon et al. 2011,
"Parallel random numbers: as easy as 1, 2, 3") hashes each element's flat index
i * n + j under the key, so a row needs neither the rows before it nor memory for them:
a sampler computes its token's row at each step instead of an n_tokens x V block
before its loop.

Threefry is written out here as the elementwise integer ops it is made of, which XLA
fuses into one loop; jax.random's own lowering on a CPU is a rolled loop of five steps,
each a round of small ops. The bits are jax.random's with `jax_threefry_partitionable`
on, its default since JAX 0.5 (tests/test_gumbel.py compares them).

Shape legend: N row width.
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


def multiply_wide(a, b):
    """(high, low) 32-bit words of the 64-bit product of two uint32 values, from 16-bit
    halves (JAX has 64-bit integers only with jax_enable_x64)."""
    a, b = jnp.asarray(a).astype(U32), jnp.asarray(b).astype(U32)
    half, mask = U32(16), U32(0xFFFF)
    a0, a1, b0, b1 = a & mask, a >> half, b & mask, b >> half
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> half) + (p01 & mask) + (p10 & mask)  # < 3 * 2^16: no overflow
    return p11 + (p01 >> half) + (p10 >> half) + (mid >> half), (mid << half) | (p00 & mask)


def gumbel_row(key, i, n: int, *, width: int | None = None):
    """Row i (an int32 scalar, may be traced) of `jax.random.gumbel(key, (rows, n),
    jnp.float32)` as a float32 vector N, for a raw threefry key (uint32[2], as
    jax.random.PRNGKey gives). `width` >= n computes N = width entries: those past n are
    the next row's first ones, for callers that pad a row."""
    width = n if width is None else width
    hi, lo = multiply_wide(i, n)                   # where row i starts in the flat index
    lo_N = lo + jnp.arange(width, dtype=U32)
    hi_N = hi + (lo_N < lo).astype(U32)            # carry into the high word
    b1, b2 = threefry2x32(key[0], key[1], hi_N, lo_N)
    bits = b1 ^ b2                                 # jax.random's 32 bits from a counter pair
    # jax.random.uniform(minval=tiny, maxval=1) from those bits: 23 of them as the mantissa
    # of a float in [1, 2), less 1; then jax.random.gumbel's -log(-log(u)).
    u = jax.lax.bitcast_convert_type((bits >> U32(9)) | U32(0x3F800000), jnp.float32) - jnp.float32(1)
    tiny = jnp.float32(np.finfo(np.float32).tiny)
    u = jnp.maximum(tiny, u * (jnp.float32(1) - tiny) + tiny)
    return -jnp.log(-jnp.log(u))
