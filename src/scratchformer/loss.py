"""Token cross-entropy with a weight mask, and the two model families' losses.

Losses return (sum of weighted token losses, sum of weights) rather than a mean,
so that gradient accumulation and sharded evaluation can add them up exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .layers import at_least_f32
from .models import PAD_ID, ahead, encdec_forward, lm_forward, lm_forward_mtp


def cross_entropy(logits_BxTxV, targets_BxT, weights_BxT, label_smoothing: float = 0.0):
    """Returns (sum_t w_t * CE_t, sum_t w_t), in float32 (float64 for f64 logits).

    With label smoothing eps the target distribution is (1-eps) on the label plus
    eps/V spread over all V classes (Szegedy et al. 2016)."""
    logp = jax.nn.log_softmax(at_least_f32(logits_BxTxV), axis=-1)
    nll = -jnp.take_along_axis(logp, targets_BxT[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    w = weights_BxT.astype(logp.dtype)
    return (nll * w).sum(), w.sum()


def lm_loss(params, batch, *, cfg: ModelConfig, train=False, key=None, label_smoothing=0.0):
    """batch: {"inputs": BxT, "targets": BxT, "weights"?: BxT}; without weights every target counts.
    In training with model.mtp_depth = D modules, module k's token losses (summed over the
    positions whose token i+k+1 is in the window, each with that target's weight) are added
    to the sum times model.mtp_weight / D; the weights' sum stays the next tokens'."""
    targets = batch["targets"]
    weights = batch["weights"] if "weights" in batch else jnp.ones(targets.shape)
    if not (train and cfg.mtp_depth):
        logits, _ = lm_forward(params, batch["inputs"], cfg=cfg, train=train, key=key)
        return cross_entropy(logits, targets, weights, label_smoothing)
    logits, more = lm_forward_mtp(params, batch["inputs"], targets, cfg=cfg, train=train, key=key)
    s, w = cross_entropy(logits, targets, weights, label_smoothing)
    for k, logits_k in enumerate(more, 1):
        s_k, _ = cross_entropy(logits_k, ahead(targets, k), ahead(weights, k), label_smoothing)
        s = s + cfg.mtp_weight / cfg.mtp_depth * s_k
    return s, w


def seq2seq_loss(params, batch, *, cfg: ModelConfig, train=False, key=None, label_smoothing=0.0):
    """batch: {"src": BxS, "tgt_in": BxT, "tgt_out": BxT}; PAD targets carry no weight."""
    logits = encdec_forward(params, batch["src"], batch["tgt_in"], cfg=cfg, train=train, key=key)
    return cross_entropy(logits, batch["tgt_out"], batch["tgt_out"] != PAD_ID, label_smoothing)

