"""The learning-rate schedule against optax's warmup + cosine schedule."""

import jax
import numpy as np
import optax
import pytest

from scratchformer.schedule import warmup_cosine


@pytest.mark.parametrize("warmup,total", [(10, 100), (0, 50), (1, 7), (99, 100)])
def test_matches_optax_at_every_step(warmup, total):
    peak, floor = 3e-3, 1e-4
    ref = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end_value=floor)
    ours = jax.jit(lambda s: warmup_cosine(s, peak=peak, min_lr=floor, warmup_steps=warmup, total_steps=total))
    got = np.array([float(ours(s)) for s in range(total)])
    want = np.array([float(ref(s + 1)) for s in range(total)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert np.isclose(got[-1], floor, rtol=1e-5)       # last step uses the floor
    if warmup:
        assert np.isclose(got[warmup - 1], peak)        # warmup ends at the peak
        assert np.isclose(got[0], peak / warmup)        # step 0 already trains
