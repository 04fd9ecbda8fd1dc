"""The learning-rate schedules against optax: warmup + cosine, and warmup-stable-decay
as a join of optax's constant and linear schedules."""

import jax
import numpy as np
import optax
import pytest

from scratchformer.optim.schedules import warmup_cosine, warmup_stable_decay


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


@pytest.mark.parametrize("warmup,total,decay", [(10, 100, 20), (0, 50, 10), (1, 7, 1), (5, 40, 40), (30, 40, 20),
                                                (0, 10, 10)])
def test_warmup_stable_decay_matches_optax_joined_schedules(warmup, total, decay):
    """optax's join of a linear warmup, a constant and a linear decay; the decay starts
    after max(warmup, total - decay) (the last two cases overlap warmup)."""
    peak, floor = 3e-3, 1e-4
    start = max(warmup, total - decay)
    ref = optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak),
                                optax.linear_schedule(peak, floor, total - start)], [warmup, start])
    ours = jax.jit(lambda s: warmup_stable_decay(s, peak=peak, min_lr=floor, warmup_steps=warmup, total_steps=total,
                                                 decay_steps=decay))
    got = np.array([float(ours(s)) for s in range(total)])
    want = np.array([float(ref(s + 1)) for s in range(total)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert np.isclose(got[-1], floor, rtol=1e-5)                # last step uses the floor
    if warmup:
        assert np.isclose(got[0], peak / warmup)                # step 0 already trains
    n_stable = start - warmup                                   # steps warmup .. start - 1 hold the peak
    np.testing.assert_allclose(got[warmup:start], peak, rtol=1e-6)
    assert n_stable == 0 or got[start] < peak
    assert np.all(np.diff(got[start:]) < 0)                     # then falls every step



def test_the_config_names_the_schedule():
    """optim.schedule picks the shape; the wsd decay takes optim.decay_fraction of train.steps."""
    from scratchformer.optim import schedule
    from scratchformer.runconfig import make_config

    def rates(**over):
        cfg = make_config("lm", "cpu-quick", {"train.steps": 200, "optim.warmup_steps": 10, **over})
        return cfg.optim, np.array([float(schedule(cfg.optim, 200)(s)) for s in range(200)])
    o, wsd = rates(**{"optim.schedule": "wsd", "optim.decay_fraction": 0.25})
    assert np.all(wsd[9:150] == np.float32(o.lr)) and wsd[150] < wsd[149] and np.isclose(wsd[-1], o.min_lr)
    o, cos = rates()
    np.testing.assert_array_equal(cos, [float(warmup_cosine(s, peak=o.lr, min_lr=o.min_lr, warmup_steps=10,
                                                            total_steps=200)) for s in range(200)])
