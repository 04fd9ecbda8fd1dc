"""Learning-rate schedules, traceable inside jit: linear warmup, then either a cosine
decay to a floor (`warmup_cosine`) or a stable phase at the peak and a linear decay to
the floor over the last steps (`warmup_stable_decay`). Both count steps the same way."""

from __future__ import annotations

import math

import jax.numpy as jnp


def warmup_cosine(step, *, peak: float, min_lr: float, warmup_steps: int, total_steps: int):
    """Learning rate used by optimizer step `step` (0-based, 0 <= step < total_steps).

    `total_steps` counts every optimizer step, warmup included. With u = step + 1:
      * u <= warmup_steps:  lr = peak * u / warmup_steps          (linear warmup)
      * otherwise:          lr = min_lr + (peak - min_lr) * (1 + cos(pi * f)) / 2,
                            f = (u - warmup_steps) / (total_steps - warmup_steps)
    so step 0 already trains (lr = peak / warmup_steps), step warmup_steps - 1 uses
    the peak, and the last step, total_steps - 1, uses exactly min_lr. This equals
    optax.warmup_cosine_decay_schedule(init_value=0, peak_value=peak, warmup_steps,
    decay_steps=total_steps, end_value=min_lr) evaluated at step + 1.
    """
    u = jnp.asarray(step, jnp.float32) + 1.0
    warm = peak * u / max(warmup_steps, 1)
    frac = jnp.clip((u - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cosine = min_lr + (peak - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
    return jnp.where(u <= warmup_steps, warm, cosine)


def warmup_stable_decay(step, *, peak: float, min_lr: float, warmup_steps: int, total_steps: int,
                        decay_steps: int):
    """Learning rate used by optimizer step `step` (0-based, 0 <= step < total_steps) of a
    warmup-stable-decay schedule (WSD: Hu et al. 2024, MiniCPM, arXiv:2404.06395; a linear
    decay over the last ~20% matches cosine in Hägele et al. 2024, arXiv:2405.18392).

    `total_steps` counts every optimizer step, warmup and decay included. With u = step + 1
    and the decay starting after u = s, s = max(warmup_steps, total_steps - decay_steps):
      * u <= warmup_steps:  lr = peak * u / warmup_steps                     (linear warmup)
      * u <= s:             lr = peak                                        (stable)
      * otherwise:          lr = peak - (peak - min_lr) * (u - s) / (total_steps - s)   (linear decay)
    so, as in warmup_cosine, step 0 already trains, step warmup_steps - 1 uses the peak,
    and the last step, total_steps - 1, uses exactly min_lr; the decay takes the last
    decay_steps steps, or every step after warmup if there are fewer. This equals optax's
    join_schedules([linear_schedule(0, peak, warmup_steps), constant_schedule(peak),
    linear_schedule(peak, min_lr, total_steps - s)], boundaries=[warmup_steps, s])
    evaluated at step + 1.
    """
    start = max(warmup_steps, total_steps - decay_steps)
    u = jnp.asarray(step, jnp.float32) + 1.0
    warm = peak * u / max(warmup_steps, 1)
    frac = jnp.clip((u - start) / max(total_steps - start, 1), 0.0, 1.0)
    return jnp.where(u <= warmup_steps, warm, peak - (peak - min_lr) * frac)
