"""LoRA (Hu et al. 2021): low-rank adapters beside a trained model's frozen linear layers.

An adapted weight W (I x O, y = x W) gains A (I x R) and B (R x O), and the layer
computes y = x W + (alpha / R) dropout(x) A B; A starts as PEFT's (kaiming-uniform,
U(-1/sqrt(I), 1/sqrt(I))), B at zero, so the adapted model starts as the model.

Two views of the same weights:
  merge   W + (alpha / R) A B in every adapted layer: what eval, sample and export use
          (exact, and no slower than the model itself).
  beside  each adapted layer's params carry its adapter (layers.LowRank) for
          kernels.linear to add dropout(x) A B to x W: what the training step uses,
          with lora.dropout or without, so that no I x O gradient is formed for a
          frozen matrix (the adapters' gradients are products with R columns).

The adapters' tree mirrors the blocks, keyed by target name whatever the layout:
  {"blocks": [{"attn": {"q": {"a", "b"}, "v": {...}}, "mlp": {"fc": {...}}}, ...]}
With model.fused_qkv the targets q, k and v are the first, second and third column
blocks of the fused "qkv" matrix; one layer's adapters then share its input (and
the dropout mask on it). A gated MLP (swiglu) offers gate, up and down, not fc, proj.

Shape legend: I input width, O output width, R rank.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .config import LoraConfig
from .errors import ConfigError
from .layers import LowRank

GROUP = {"q": "attn", "k": "attn", "v": "attn", "out": "attn", "fc": "mlp", "proj": "mlp", "gate": "mlp", "up": "mlp",
         "down": "mlp"}
FUSED = {"q": 0, "k": 1, "v": 2}  # column block of each in a fused "qkv" matrix


def _offers(block: dict) -> list[str]:
    """The targets a block's params offer."""
    return [n for n in GROUP if n in block[GROUP[n]] or (n in FUSED and "qkv" in block["attn"])]


def _where(block: dict, name: str) -> tuple[str, str, slice]:
    """(group, linear, columns) of target `name` in a block's params: its own matrix
    (all columns) or a column block of the fused "qkv" one."""
    group = block[GROUP[name]]
    if name in group:
        return GROUP[name], name, slice(None)
    if name in FUSED and "qkv" in group:
        width = group["qkv"]["w"].shape[1] // 3
        return "attn", "qkv", slice(FUSED[name] * width, (FUSED[name] + 1) * width)
    raise ConfigError(f"lora.targets names {name!r}, a layer this model does not have; its blocks have "
                      f"{', '.join(_offers(block))}")


def init_adapters(key, params: dict, lo: LoraConfig) -> dict:
    """Adapters of rank lo.rank for lo.targets in every block of `params` (arrays or
    ShapeDtypeStructs): A kaiming-uniform as PEFT's (torch's nn.Linear init, whose
    bound with a = sqrt(5) is 1/sqrt(I)), B zero. A one-line ConfigError for a target
    the model lacks or a rank above the smaller side of a matrix it adapts."""
    blocks = []
    for k_block, block in zip(jax.random.split(key, len(params["blocks"])), params["blocks"]):
        adapters: dict = {}
        for i, name in enumerate(lo.target_names):
            group, linear, cols = _where(block, name)
            d_in, width = block[group][linear]["w"].shape
            d_out = len(range(width)[cols])
            if lo.rank > min(d_in, d_out):
                raise ConfigError(f"lora.rank={lo.rank} is more than the {d_in} x {d_out} matrix of target {name!r} "
                                  f"can use; choose at most {min(d_in, d_out)}")
            bound = 1.0 / math.sqrt(d_in)
            a = jax.random.uniform(jax.random.fold_in(k_block, i), (d_in, lo.rank), jnp.float32, -bound, bound)
            adapters.setdefault(group, {})[name] = {"a": a, "b": jnp.zeros((lo.rank, d_out), jnp.float32)}
        blocks.append(adapters)
    return {"blocks": blocks}


def _adapted(base: dict, adapters: dict, lo: LoraConfig, attach) -> dict:
    """`base` with attach(layer, A, B, i) in place of each adapted linear layer: A
    (I x nR) the A's of its n targets side by side, B (nR x O) their B's scaled by
    alpha / rank, each in its target's columns (zero in the others); i numbers the
    adapted layers from 0."""
    scale, rank = lo.alpha / lo.rank, lo.rank
    blocks, i = [], 0
    for block, ad in zip(base["blocks"], adapters["blocks"]):
        block = {**block, **{group: dict(block[group]) for group in ad}}
        layers: dict = {}  # (group, linear) -> [(columns, adapter)]
        for group, targets in ad.items():
            for name, p in targets.items():
                _, linear, cols = _where(block, name)
                layers.setdefault((group, linear), []).append((cols, p))
        for (group, linear), parts in layers.items():
            layer = block[group][linear]
            a_IxNR = jnp.concatenate([p["a"] for _, p in parts], axis=1)
            b_NRxO = jnp.zeros((a_IxNR.shape[1], layer["w"].shape[1]), parts[0][1]["b"].dtype)
            for j, (cols, p) in enumerate(parts):
                b_NRxO = b_NRxO.at[j * rank:(j + 1) * rank, cols].set(scale * p["b"])
            block[group][linear] = attach(layer, a_IxNR, b_NRxO, i)
            i += 1
        blocks.append(block)
    return {**base, "blocks": blocks}


def merge(base: dict, adapters: dict, lo: LoraConfig) -> dict:
    """The model's weights: W + (alpha / R) A B in every adapted layer, the product in
    full float32 precision (a GPU's default would round it as TF32)."""
    def attach(layer, a, b, i):
        return {**layer, "w": layer["w"] + jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST)}
    return _adapted(base, adapters, lo, attach)


def beside(base: dict, adapters: dict, lo: LoraConfig, key=None) -> dict:
    """The frozen weights with each adapted layer's adapter beside its weight (under
    "lora", a layers.LowRank that kernels.linear adds): the same function as `merge`'s
    weights, and with lora.dropout > 0 each layer's own dropout mask on the adapter's
    input, drawn from `key` (the training step's)."""
    def attach(layer, a, b, i):
        return {**layer, "lora": LowRank(a, b, jax.random.fold_in(key, i) if lo.dropout else None, lo.dropout)}
    return _adapted(base, adapters, lo, attach)
