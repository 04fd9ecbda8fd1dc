"""The task interface (a Protocol: LMTask and ReverseTask need no common base) and
the evaluation loop both tasks share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from ..config import ModelConfig, RunConfig
from ..parallel import chunks_on_mesh, host_value, make_mesh


class Task(Protocol):
    name: ClassVar[str]              # the registry's key, config.json's "task"
    unit: ClassVar[str]              # what a step trains on: "tok" (tokens) or "seq" (sequences)
    stacks: ClassVar[int]            # layer stacks of n_layer blocks (2: encoder and decoder)
    Data: ClassVar[type]             # the task's data section of the config (a frozen dataclass)
    presets: ClassVar[dict[str, dict[str, Any]]]  # named overrides, applied like --set
    default_preset: ClassVar[str]
    sample_options: ClassVar[dict[str, Any]]      # `sample`'s options and their defaults
    eval_options: ClassVar[dict[str, Any]]        # `eval`'s options and their defaults
    cfg: RunConfig
    source: dict | None              # the data file's {"path", "sha256"}, saved with each checkpoint
    mesh: Any                        # set by the training loop; None: all visible devices

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None: ...
    @classmethod
    def max_vocab(cls, cfg: RunConfig) -> int: ...
    @classmethod
    def tokens_per_step(cls, cfg: RunConfig) -> int: ...
    @classmethod
    def from_data(cls, cfg: RunConfig, path=None) -> "Task": ...
    @classmethod
    def from_meta(cls, cfg: RunConfig, meta: dict) -> "Task": ...
    @staticmethod
    def describe(result: dict) -> str: ...

    def meta(self) -> dict: ...
    def with_training_data(self, meta: dict, run_dir) -> "Task": ...
    @staticmethod
    def init_params(key, cfg: ModelConfig) -> dict: ...
    @staticmethod
    def loss(params, batch, *, cfg: ModelConfig, train: bool = False, key=None, label_smoothing: float = 0.0):
        """(sum of token losses, sum of weights) of a batch."""
    def device_data(self) -> dict: ...
    def sample_batch(self, data: dict, key, batch: int) -> dict: ...
    def evaluate(self, params, *, full: bool, progress: bool = False, **options) -> dict: ...
    def sample(self, params, **options) -> tuple[str, str | None]: ...
    def plot_attention(self, run_dir, params, meta: dict) -> Path: ...


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
