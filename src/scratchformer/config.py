"""Run configuration: frozen dataclasses, named presets, `--set` overrides, strict JSON.

Every default lives here and nowhere else. A run is described by one `RunConfig`
(task + four sections); the CLI's `--set section.key=value`, the presets and a
checkpoint's `config.json` all go through `apply_overrides` / `from_dict`, so they
are validated by the same code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

TASKS = ("reverse", "lm")
DTYPES = ("float32", "bfloat16", "float64")  # float64: for numerical checks (needs jax_enable_x64)
POSITIONS = ("learned", "sinusoidal", "rope")

# Upper bounds that keep a tampered or mistyped config from allocating absurd
# arrays: they are far above anything a CPU or one GPU trains here.
_MAX = {
    "n_layer": 256, "n_head": 1024, "d_model": 65536, "d_ff": 262144,
    "block_size": 131072, "vocab_size": 1 << 20, "batch_size": 1 << 20,
    "steps": 1 << 31, "grad_accum": 4096, "steps_per_call": 4096,
    "max_len": 4096, "eval_size": 1 << 24,
}
_MAX_PARAMS = 1 << 34  # ~17e9 parameters


class ConfigError(ValueError):
    """A configuration value a person gave is not acceptable (message names it)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _positive(obj, *names):
    for n in names:
        v = getattr(obj, n)
        _check(v > 0, f"{_section(obj)}.{n}={v!r} must be > 0")


def _bounded(obj, *names):
    for n in names:
        v = getattr(obj, n)
        _check(v <= _MAX[n], f"{_section(obj)}.{n}={v!r} is larger than the limit {_MAX[n]}")


def _section(obj) -> str:
    return {ModelConfig: "model", OptimConfig: "optim", TrainConfig: "train",
            DataConfig: "data"}[type(obj)]


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 4          # blocks (per stack for the encoder-decoder)
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    dropout: float = 0.0
    block_size: int = 64      # longest sequence the model sees (LM context; enc-dec max length)
    vocab_size: int = 0       # set from the data by the task, never by hand
    tie_embeddings: bool = True
    fused_qkv: bool = True
    positions: str = "learned"  # learned table, sinusoidal (Vaswani et al.) or rope (rotary, Su et al.)
    bias: bool = True
    ln_eps: float = 1e-5
    dtype: str = "float32"    # activation / matmul dtype; params and optimizer stay float32
    attn_block: int = 128     # causal self-attention in query blocks of this many positions
                              # (skips the masked half) when T is a multiple >= 2x; 0 = off

    def __post_init__(self):
        _positive(self, "n_layer", "n_head", "d_model", "d_ff", "block_size")
        _bounded(self, "n_layer", "n_head", "d_model", "d_ff", "block_size", "vocab_size")
        _check(self.d_model % self.n_head == 0,
               f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout!r} must be in [0, 1)")
        _check(self.vocab_size >= 0, f"model.vocab_size={self.vocab_size} must be >= 0")
        _check(self.positions in POSITIONS,
               f"model.positions={self.positions!r} is not one of {', '.join(POSITIONS)}")
        _check(self.positions != "rope" or self.head_dim % 2 == 0,
               f"model.positions='rope' rotates pairs of channels: the head width model.d_model / model.n_head = "
               f"{self.d_model} / {self.n_head} must be even")
        _check(self.dtype in DTYPES, f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        _check(self.attn_block >= 0, f"model.attn_block={self.attn_block} must be >= 0 (0 turns it off)")
        _check(0.0 < self.ln_eps < 1.0, f"model.ln_eps={self.ln_eps!r} must be in (0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3            # peak learning rate, reached at the end of warmup
    min_lr: float = 1e-4        # floor the cosine decays to at the last step
    warmup_steps: int = 100
    weight_decay: float = 0.1   # decoupled, multiplied by lr (torch / optax convention)
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    clip_norm: float = 1.0      # global-norm clipping; 0 disables
    decay_embeddings: bool = True

    def __post_init__(self):
        _check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr={self.lr!r} must be > 0")
        _check(0 <= self.min_lr <= self.lr, f"optim.min_lr={self.min_lr!r} must be in [0, optim.lr={self.lr!r}]")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        _check(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay!r} must be >= 0")
        for n in ("b1", "b2"):
            v = getattr(self, n)
            _check(0 <= v < 1, f"optim.{n}={v!r} must be in [0, 1)")
        _check(self.eps > 0, f"optim.eps={self.eps!r} must be > 0")
        _check(self.clip_norm >= 0, f"optim.clip_norm={self.clip_norm!r} must be >= 0 (0 disables)")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    steps: int = 2000
    grad_accum: int = 1           # micro-batches per optimizer step
    steps_per_call: int = 10      # optimizer steps per jitted call (lax.scan); same numbers as 1
    eval_every: int = 250
    eval_windows: int = 256       # LM: windows of the periodic evaluation (0 = whole split)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2     # latest K kept, plus the best
    seed: int = 0
    label_smoothing: float = 0.0
    skip_nonfinite: bool = False  # skip a step whose loss/gradient is NaN/inf instead of stopping

    def __post_init__(self):
        _positive(self, "batch_size", "steps", "grad_accum", "steps_per_call",
                  "eval_every", "checkpoint_every", "keep_checkpoints")
        _bounded(self, "batch_size", "steps", "grad_accum", "steps_per_call")
        _check(self.eval_windows >= 0, f"train.eval_windows={self.eval_windows} must be >= 0")
        _check(self.batch_size % self.grad_accum == 0,
               f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        _check(0 <= self.label_smoothing < 1,
               f"train.label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        _check(0 <= self.seed < 2**32, f"train.seed={self.seed} must be in [0, 2**32)")


@dataclass(frozen=True)
class DataConfig:
    # reversal task
    vocab_size: int = 20          # symbols 0..vocab_size-1 (plus PAD, BOS, EOS)
    min_len: int = 1
    max_len: int = 20
    eval_size: int = 10000
    eval_seed: int = 1234
    # language model
    val_fraction: float = 0.1     # last 10% of the text is validation (nanoGPT's split)

    def __post_init__(self):
        _positive(self, "vocab_size", "min_len", "max_len", "eval_size")
        _bounded(self, "vocab_size", "max_len", "eval_size")
        _check(self.min_len <= self.max_len,
               f"data.min_len={self.min_len} is larger than data.max_len={self.max_len}")
        _check(0 < self.val_fraction < 1, f"data.val_fraction={self.val_fraction!r} must be in (0, 1)")


SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "data": DataConfig}
# Keys the task derives from the data; a person cannot set them.
DERIVED = {"model.vocab_size"}
# Keys that one task reads and the other ignores: setting one for the other task is an
# error, not a silent no-op (a run's config.json still lists them, at their defaults).
TASK_ONLY = {"data.vocab_size": "reverse", "data.min_len": "reverse", "data.max_len": "reverse",
             "data.eval_size": "reverse", "data.eval_seed": "reverse",
             "data.val_fraction": "lm", "train.eval_windows": "lm"}


@dataclass(frozen=True)
class RunConfig:
    task: str = "lm"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        _check(self.task in TASKS, f"task={self.task!r} is not one of {', '.join(TASKS)}")
        _check(self.optim.warmup_steps < self.train.steps,
               f"optim.warmup_steps={self.optim.warmup_steps} must be smaller than train.steps={self.train.steps} "
               f"(for a short run, also pass --set optim.warmup_steps=N with N < {self.train.steps})")
        if self.task == "reverse":
            need = self.data.max_len + 2
            _check(self.model.block_size >= need,
                   f"model.block_size={self.model.block_size} is too small for data.max_len="
                   f"{self.data.max_len} (needs >= {need}: BOS/EOS)")
        n = approx_params(self)
        _check(n <= _MAX_PARAMS, f"the model would have ~{n:.3g} parameters, over the limit {_MAX_PARAMS:.3g}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def approx_params(cfg: RunConfig) -> int:
    m = cfg.model
    v = max(m.vocab_size, cfg.data.vocab_size + 3)
    per_block = 4 * m.d_model * m.d_model + 2 * m.d_model * m.d_ff
    stacks = 2 if cfg.task == "reverse" else 1
    return stacks * m.n_layer * per_block + v * m.d_model + m.block_size * m.d_model


# ---------------------------------------------------------------- presets
# Each preset is a set of overrides on the defaults above, applied like --set.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "reverse": {
        # Learned positions: on this task they leave the ~400-step loss plateau that
        # sinusoidal positions show within ~100 steps (measured; see README), so the
        # default preset reaches 100% in 800 steps. --set model.positions=sinusoidal
        # gives Vaswani et al.'s encoding (100% in ~1500 steps).
        "default": {
            "model.n_layer": 2, "model.n_head": 4, "model.d_model": 64, "model.d_ff": 128,
            "model.block_size": 22, "model.positions": "learned",
            "optim.lr": 3e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 100,
            "optim.weight_decay": 0.01, "optim.b2": 0.98,
            "train.batch_size": 128, "train.steps": 800, "train.eval_every": 200,
            "train.checkpoint_every": 400, "train.steps_per_call": 50,
        },
    },
    "lm": {
        # Tuned on a 2-core CPU for validation loss <= 1.88 in <= 45 s (see README).
        "cpu-quick": {
            "model.n_layer": 3, "model.n_head": 4, "model.d_model": 128, "model.d_ff": 512,
            "model.block_size": 64, "model.dropout": 0.0,
            "optim.lr": 5e-3, "optim.min_lr": 5e-4, "optim.warmup_steps": 30,
            "train.batch_size": 16, "train.steps": 1500, "train.eval_every": 250,
            "train.checkpoint_every": 500, "train.steps_per_call": 25,
        },
        # Tuned on a 2-core CPU for validation loss <= 1.60 within 10 minutes (see README).
        "cpu": {
            "model.n_layer": 4, "model.n_head": 4, "model.d_model": 192, "model.d_ff": 768,
            "model.block_size": 128, "model.dropout": 0.0,
            "model.attn_block": 64,  # two query blocks at T=128: ~3% faster per step here
            "optim.lr": 3e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 100,
            "train.batch_size": 32, "train.steps": 2500, "train.eval_every": 500,
            "train.checkpoint_every": 500, "train.steps_per_call": 20,
        },
        # nanoGPT's shakespeare_char GPU settings, but 2,500 steps (not 5,000) and bf16:
        # at 5,000 the validation loss bottoms out at ~1.473 and then overfits; at 2,500 the
        # cosine decay ends near that bottom (BENCHMARKS.md, GPU).
        "gpu": {
            "model.n_layer": 6, "model.n_head": 6, "model.d_model": 384, "model.d_ff": 1536,
            "model.block_size": 256, "model.dropout": 0.2, "model.dtype": "bfloat16",
            "model.attn_block": 0,  # 128 is 2-3% faster on an H200; the figures were measured at 0
            "optim.lr": 1e-3, "optim.min_lr": 1e-4, "optim.warmup_steps": 100, "optim.b2": 0.99,
            "train.batch_size": 64, "train.steps": 2500, "train.eval_every": 250,
            "train.checkpoint_every": 500, "train.steps_per_call": 25, "train.eval_windows": 0,
        },
    },
}
DEFAULT_PRESET = {"reverse": "default", "lm": "cpu"}


def _parse_value(key: str, raw: Any, typ: type) -> Any:
    """Turn a --set string (or a JSON value) into the field's type, strictly."""
    if isinstance(raw, str):
        s = raw.strip()
        try:
            if typ is bool:
                if s.lower() in ("true", "1", "yes", "on"):
                    return True
                if s.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            if typ is int:
                return int(s)
            if typ is float:
                v = float(s)
                if not math.isfinite(v):
                    raise ValueError
                return v
            return s
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is not a valid {typ.__name__}") from None
    # Non-string values (presets, JSON): exact types only; an int is a valid float.
    if typ is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if type(raw) is not typ:
        raise ConfigError(f"{key}={raw!r} has type {type(raw).__name__}, expected {typ.__name__}")
    return raw


def _field_types(cls) -> dict[str, type]:
    return {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(cls)}


def all_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in SECTIONS.items() for k in _field_types(cls)]


def describe_keys() -> list[str]:
    """'section.key  type  default' for every key a person may set (for --help)."""
    out = []
    for s, cls in SECTIONS.items():
        for f in fields(cls):
            key = f"{s}.{f.name}"
            if key not in DERIVED:
                only = f" ({TASK_ONLY[key]} only)" if key in TASK_ONLY else ""
                out.append(f"{key:<26} {f.type:<6} {f.default!r}{only}")
    return out


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], *, allow_derived=False) -> RunConfig:
    """Return cfg with `section.key -> value` overrides applied and validated."""
    changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, raw in overrides.items():
        typ = _key_type(key)
        if key in DERIVED and not allow_derived:
            raise ConfigError(f"{key} is derived from the data and cannot be set")
        section, _, name = key.partition(".")
        changes[section][name] = _parse_value(key, raw, typ)
    return replace(cfg, **{s: replace(getattr(cfg, s), **c) for s, c in changes.items() if c})


def _key_type(key: str) -> type:
    """The type of config key `section.key`; ConfigError naming the known keys if none."""
    section, _, name = key.partition(".")
    types = _field_types(SECTIONS[section]) if section in SECTIONS else {}
    if name not in types:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(all_keys())}")
    return types[name]


def parse_set_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r} is not of the form section.key=value")
        out[key.strip()] = value
    return out


def make_config(task: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the preset, then the overrides, validated once as a whole (so a
    preset's train.steps and an override's optim.warmup_steps are checked together)."""
    _check(task in TASKS, f"task={task!r} is not one of {', '.join(TASKS)}")
    preset = preset or DEFAULT_PRESET[task]
    if preset not in PRESETS[task]:
        raise ConfigError(f"unknown preset {preset!r} for task {task!r}; choose from "
                          f"{', '.join(PRESETS[task])}")
    merged = {**PRESETS[task][preset], **(overrides or {})}
    for key in merged:
        other = TASK_ONLY.get(key, task)
        _check(other == task, f"{key} is a setting of the {other} task; the {task} task does not use it")
    return apply_overrides(RunConfig(task=task), merged)


def _default(key: str) -> Any:
    section, _, name = key.partition(".")
    return next(f.default for f in fields(SECTIONS[section]) if f.name == name)


def from_dict(d: Any) -> RunConfig:
    """Strictly rebuild a RunConfig from JSON data: no unknown keys, exact types, bounds."""
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    extra = set(d) - {"task", *SECTIONS}
    if extra:
        raise ConfigError(f"unknown config section(s) {sorted(extra)}; known: task, {', '.join(SECTIONS)}")
    task = d.get("task")
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not one of {', '.join(TASKS)}")
    return apply_overrides(RunConfig(task=task), _json_overrides(d), allow_derived=True)


def _json_overrides(d: dict) -> dict[str, Any]:
    """A config's JSON object (all sections or some) as `section.key -> value`."""
    overrides = {}
    for section in SECTIONS:
        sub = d.get(section, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"config section {section!r} must be an object")
        for k, v in sub.items():
            overrides[f"{section}.{k}"] = v
    for key, v in overrides.items():  # JSON holds typed values; strings only for str fields
        typ = _key_type(key)
        if typ is not str and isinstance(v, str):
            raise ConfigError(f"{key}={v!r} has type str, expected {typ.__name__}")
    return overrides


def overrides_from_file(path, task: str) -> dict[str, Any]:
    """`train --config FILE`: the settings in a JSON file (a run's config.json or its
    folder, or any part of one: {"model": {"n_layer": 2}}) as overrides, applied after
    the preset and before --set. A "task" in the file must be `task`; model.vocab_size
    is left out (the task derives it from the data), and so are the other task's keys
    where they hold their defaults (a config.json lists every key). Types are checked
    as in from_dict; bounds and cross-field rules when make_config validates the whole."""
    from pathlib import Path
    if Path(path).is_dir():  # a run folder stands for its config.json
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"--config {path} is a folder without a config.json")
        path = Path(path) / "config.json"
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except ValueError as e:  # not JSON, not UTF-8
        raise ConfigError(f"--config {path} is not a valid config: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--config {path} must hold a JSON object, not {type(d).__name__}")
    extra = set(d) - {"task", *SECTIONS}
    if extra:
        raise ConfigError(f"--config {path}: unknown config section(s) {sorted(extra)}; known: task, "
                          f"{', '.join(SECTIONS)}")
    if d.get("task", task) != task:
        raise ConfigError(f"--config {path} is a config for task {d['task']!r}, not {task!r}")
    try:
        overrides = _json_overrides(d)  # unknown keys and wrong types are named here, with the file
    except ConfigError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    for key, value in overrides.items():  # a run's config.json lists the other task's keys, at their defaults
        other = TASK_ONLY.get(key, task)
        if other != task and value != _default(key):
            raise ConfigError(f"--config {path}: {key}={value!r} is a setting of the {other} task; the {task} "
                              "task does not use it")
    return {k: v for k, v in overrides.items() if k not in DERIVED and TASK_ONLY.get(k, task) == task}


def from_file(path) -> RunConfig:
    """from_dict on a run folder's config.json; a ConfigError naming the file if it is
    not valid JSON or not a valid config."""
    from pathlib import Path
    try:
        return from_dict(json.loads(Path(path).read_text()))
    except ValueError as e:  # json's errors and ConfigError alike
        raise ConfigError(f"{path} is not a valid config: {str(e).splitlines()[0]}") from None
