"""gumbel.py against jax.random: the same Threefry bits and the same Gumbel noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from scratchformer.gumbel import gumbel, threefry2x32


def test_threefry_matches_jax_on_any_counters():
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(11)
    x1, x2 = (jnp.asarray(rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)) for _ in range(2))
    want = np.asarray(threefry_2x32(key, jnp.concatenate([x1, x2])))  # its count splits into the two words
    got = np.concatenate([np.asarray(b) for b in jax.jit(threefry2x32)(key[0], key[1], x1, x2)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [1, 13, 64, 50_257, 50_304])
def test_noise_is_jax_random_gumbel_bit_for_bit(n):
    """For the keys the sampler uses (a seed's key folded with a token's index) and for
    widths odd and even: the float32 bits, not only the values, are jax.random's."""
    noise = jax.jit(gumbel, static_argnums=1)
    for seed, i in [(0, 0), (3, 1), (12_345, 2**31 - 1)]:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        want = np.asarray(jax.random.gumbel(key, (n,), jnp.float32))
        np.testing.assert_array_equal(np.asarray(noise(key, n)).view(np.uint32), want.view(np.uint32))


def test_a_wider_draw_begins_with_the_narrower():
    """Element j depends on the key and j alone: the sampler's noise padded to a multiple
    of 64 holds the unpadded noise first."""
    key = jax.random.PRNGKey(5)
    np.testing.assert_array_equal(np.asarray(gumbel(key, 50_304))[:50_257], np.asarray(gumbel(key, 50_257)))
