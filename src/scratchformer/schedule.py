"""Learning rate: linear warmup then cosine decay to a floor. Traceable inside jit."""

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
