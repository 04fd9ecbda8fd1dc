"""The task interface (a Protocol: LMTask and ReverseTask need no common base) and
the evaluation loop both tasks share."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

from ..config import ModelConfig, RunConfig
from ..parallel import chunks_on_mesh, host_value, make_mesh, put_global, replicated


class Task(Protocol):
    name: ClassVar[str]              # the registry's key, config.json's "task"
    unit: ClassVar[str]              # what a step trains on: "tok" (tokens) or "seq" (sequences)
    stacks: ClassVar[int]            # layer stacks of n_layer blocks (2: encoder and decoder); Data.stacks
    Data: ClassVar[type]             # the task's data section of the config (a frozen dataclass with
                                     # `task`, `stacks`, check_run(cfg) and max_vocab(cfg))
    presets: ClassVar[dict[str, dict[str, Any]]]  # named overrides, applied like --set
    default_preset: ClassVar[str]
    finetune_preset: ClassVar[str]  # the default with --init-from
    lora_preset: ClassVar[str]      # the default with --init-from and --lora
    sample_options: ClassVar[dict[str, Any]]      # `sample`'s options and their defaults
    eval_options: ClassVar[dict[str, Any]]        # `eval`'s options and their defaults
    cfg: RunConfig
    source: dict | None              # the data file's {"path", "sha256"}, saved with each checkpoint
    mesh: Any                        # set by the training loop; None: all visible devices

    @classmethod
    def tokens_per_step(cls, cfg: RunConfig) -> int: ...
    @classmethod
    def from_data(cls, cfg: RunConfig, path=None, like=None) -> "Task": ...
    @classmethod
    def from_meta(cls, cfg: RunConfig, meta: dict) -> "Task": ...
    @staticmethod
    def describe(result: dict) -> str: ...

    def meta(self) -> dict: ...
    def run_files(self) -> dict[str, str]: ...
    def with_training_data(self, meta: dict, run_dir) -> "Task": ...
    @staticmethod
    def init_params(key, cfg: ModelConfig) -> dict: ...
    @staticmethod
    def loss(params, batch, *, cfg: ModelConfig, train: bool = False, key=None, label_smoothing: float = 0.0):
        """(sum of token losses, sum of weights) of a batch."""
    def input_spec(self, mesh, k: int) -> dict: ...
    def feed(self, spec: dict, rng, first_step: int, k: int): ...
    def batches(self, data: dict, rng, first_step, n_steps: int, batch: int) -> dict: ...
    def evaluate(self, params, *, full: bool, progress: bool = False, **options) -> dict: ...
    def sample(self, params, **options) -> tuple[str, str | None]: ...


def eval_loss(loss_fn, params, arrays: dict, chunk: int, mesh=None, on_chunk=None) -> tuple[float, int]:
    """Sum a loss over fixed-size chunks split over the mesh (zero-weighted padding in
    the last), so the evaluation compiles once whatever the set's size. `on_chunk(w)`,
    if given, is called after each chunk with its weight (for progress).
    Returns (mean loss, total weight)."""
    total, weight = 0.0, 0.0
    for _, part in chunks_on_mesh(arrays, chunk, mesh or make_mesh()):
        s, w = loss_fn(params, part)
        total += float(host_value(s))
        w = float(host_value(w))
        weight += w
        if on_chunk:
            on_chunk(int(w))
    return total / max(weight, 1.0), int(weight)


def batch_key(rng, step):
    """The key of step `step`'s batch: a function of the run's key and the step alone."""
    return jax.random.fold_in(jax.random.fold_in(rng, step), 0)


class DrawnOnDevice:
    """Batches drawn on device inside the jitted call from data placed there once
    (`device_data`): step s's batch is `sample_batch(data, batch_key(rng, s), batch)`."""

    def input_spec(self, mesh, k: int) -> dict:
        """What the training call takes besides the state (here: the device data)."""
        return put_global(self.device_data(), replicated(mesh))

    def feed(self, spec: dict, rng, first_step: int, k: int):
        """The training call's data, call after call (here the same every call); a
        generator, closed when training ends."""
        while True:
            yield spec

    def batches(self, data: dict, rng, first_step, n_steps: int, batch: int) -> dict:
        """The batches of steps first_step..first_step+n_steps-1, stacked (inside jit).
        Drawn at once, before the steps run: the same numbers as one at a time, in one
        vectorised random-bits computation."""
        def draw(step):
            return self.sample_batch(data, batch_key(rng, step), batch)
        return jax.vmap(draw)(first_step + jnp.arange(n_steps))
