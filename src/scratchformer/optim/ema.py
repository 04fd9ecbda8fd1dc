"""The moving average of the weights (train.ema): what a run evaluates, samples and
exports in place of the raw weights when it keeps one."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ema_decay(decay: float, step):
    """The moving average's decay for the update after `step` steps: `decay`, but at most
    (1 + step) / (10 + step), so that the first weights (mostly the initialisation) fade
    quickly (TensorFlow's ExponentialMovingAverage with num_updates)."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay):
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf, in the average's dtype."""
    return jax.tree.map(lambda e, p: (e + (1.0 - decay) * (p.astype(e.dtype) - e)).astype(e.dtype), ema, params)
