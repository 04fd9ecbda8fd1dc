"""gumbel.py against jax.random: the same Threefry bits and the same Gumbel rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from scratchformer.gumbel import gumbel_row, multiply_wide, threefry2x32


def test_threefry_matches_jax_on_any_counters():
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(11)
    x1, x2 = (jnp.asarray(rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)) for _ in range(2))
    want = np.asarray(threefry_2x32(key, jnp.concatenate([x1, x2])))  # its count splits into the two words
    got = np.concatenate([np.asarray(b) for b in jax.jit(threefry2x32)(key[0], key[1], x1, x2)])
    np.testing.assert_array_equal(got, want)


def test_multiply_wide_against_64_bit_numpy():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 2**32, 1000, dtype=np.uint64) for _ in range(2))
    a[:2], b[:2] = 2**32 - 1, [2**32 - 1, 0]
    hi, lo = jax.jit(multiply_wide)(a.astype(np.uint32), b.astype(np.uint32))
    np.testing.assert_array_equal(np.asarray(hi, np.uint64), (a * b) >> np.uint64(32))
    np.testing.assert_array_equal(np.asarray(lo, np.uint64), (a * b) & np.uint64(2**32 - 1))


@pytest.mark.parametrize("rows,n", [(7, 13), (3, 50_257), (2, 64)])
def test_rows_are_jax_random_gumbel_rows(rows, n):
    key = jax.random.PRNGKey(3)
    want = np.asarray(jax.random.gumbel(key, (rows, n), jnp.float32))
    row = jax.jit(gumbel_row, static_argnums=2)
    for i in range(rows):
        np.testing.assert_array_equal(np.asarray(row(key, jnp.int32(i), n)), want[i])


def test_padded_row_runs_on_into_the_next_row():
    key = jax.random.PRNGKey(5)
    want = np.asarray(jax.random.gumbel(key, (3, 13), jnp.float32)).reshape(-1)
    np.testing.assert_array_equal(np.asarray(gumbel_row(key, jnp.int32(1), 13, width=20)), want[13:33])


def test_rows_past_two_to_the_32_elements():
    """Row 90,000 of width 50,257 starts past element 2^32: the flat index's high word
    is 1, and each value is Threefry's hash of that (high, low) pair."""
    key, i, n = jax.random.PRNGKey(2), 90_000, 50_257
    start = i * n
    flat = start + np.arange(n, dtype=np.uint64)
    hi, lo = (flat >> np.uint64(32)).astype(np.uint32), (flat & np.uint64(2**32 - 1)).astype(np.uint32)
    assert hi[0] == 1
    b = np.asarray(threefry_2x32(key, jnp.concatenate([jnp.asarray(hi), jnp.asarray(lo)])))
    bits = b[:n] ^ b[n:]
    u = np.maximum(np.finfo(np.float32).tiny, ((bits >> 9) | 0x3F800000).view(np.float32) - np.float32(1))
    want = -np.log(-np.log(u))
    np.testing.assert_allclose(np.asarray(gumbel_row(key, jnp.int32(i), n)), want, rtol=1e-6, atol=1e-6)
