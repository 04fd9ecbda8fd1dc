"""Run configuration: frozen dataclasses, `--set` overrides, strict JSON.

Every default lives here, or in the data section of the task that owns it (each
task brings its own: `tasks.TASKS`), and nowhere else. A run is described by one
`RunConfig` (task + model, optim, train and the task's data section); a preset,
`--set section.key=value`, a `--config` file and a checkpoint's config all go
through `apply_overrides`, so they are validated by the same code.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

# config.json's layout: 1 had one data section holding both tasks' keys and
# train.eval_windows; 2 gives each task its own data section (see _upgrade).
FORMAT = 2
DTYPES = ("float32", "bfloat16", "float64")  # float64: for numerical checks (needs jax_enable_x64)
POSITIONS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu2")
PRODUCTS = ("auto", "float32", "bfloat16")

# Upper bounds that keep a tampered or mistyped config from allocating absurd
# arrays: they are far above anything a CPU or one GPU trains here.
MAX = {
    "n_layer": 256, "n_head": 1024, "d_model": 65536, "d_ff": 262144,
    "block_size": 131072, "vocab_size": 1 << 20, "batch_size": 1 << 20,
    "steps": 1 << 31, "grad_accum": 4096, "steps_per_call": 4096,
    "max_len": 4096, "eval_size": 1 << 24,
}
MAX_PARAMS = 1 << 34  # ~17e9 parameters
SECTIONS = ("model", "optim", "train", "data")
DERIVED = {"model.vocab_size"}  # set by the task from the data; a person cannot set it


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def check_positive(obj, section: str, *names) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v > 0, f"{section}.{n}={v!r} must be > 0")


def check_bounded(obj, section: str, *names) -> None:
    for n in names:
        v = getattr(obj, n)
        check(v <= MAX[n], f"{section}.{n}={v!r} is larger than the limit {MAX[n]}")


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
    ln_eps: float = 1e-5      # epsilon of every norm (and of qk_norm)
    norm: str = "layernorm"   # layernorm (Ba et al. 2016) or rmsnorm (Zhang & Sennrich 2019: a scale, no bias)
    qk_norm: bool = False     # RMS-normalise each head's queries and keys, no parameters (modded-nanogpt)
    activation: str = "gelu_tanh"  # feed-forward: gelu_tanh (GPT-2), gelu (exact, erf) or relu2 (So et al. 2021)
    zero_init: bool = False   # attention's and the MLP's output projections start at zero (modded-nanogpt)
    logit_softcap: float = 0.0  # c > 0: logits = c * tanh(logits / c) (Gemma 2); 0 = off
    dtype: str = "float32"    # activation / matmul dtype; params and optimizer stay float32
    products: str = "float32"  # float32 layers' matrix products: bfloat16 inputs with float32 sums, or
                               # float32; auto: bfloat16 where it is faster (kernels.product_dtype)
    attn_block: int = 128     # causal self-attention in query blocks of this many positions
                              # (skips the masked half) when T is a multiple >= 2x; 0 = off

    def __post_init__(self):
        check_positive(self, "model", "n_layer", "n_head", "d_model", "d_ff", "block_size")
        check_bounded(self, "model", "n_layer", "n_head", "d_model", "d_ff", "block_size", "vocab_size")
        check(self.d_model % self.n_head == 0,
              f"model.d_model={self.d_model} is not divisible by model.n_head={self.n_head}")
        check(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout!r} must be in [0, 1)")
        check(self.vocab_size >= 0, f"model.vocab_size={self.vocab_size} must be >= 0")
        check(self.positions in POSITIONS, f"model.positions={self.positions!r} is not one of {', '.join(POSITIONS)}")
        check(self.positions != "rope" or self.head_dim % 2 == 0,
              f"model.positions='rope' rotates pairs of channels: the head width model.d_model / model.n_head = "
              f"{self.d_model} / {self.n_head} must be even")
        check(self.dtype in DTYPES, f"model.dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        check(self.products in PRODUCTS, f"model.products={self.products!r} is not one of {', '.join(PRODUCTS)}")
        check(self.attn_block >= 0, f"model.attn_block={self.attn_block} must be >= 0 (0 turns it off)")
        check(0.0 < self.ln_eps < 1.0, f"model.ln_eps={self.ln_eps!r} must be in (0, 1)")
        check(self.norm in NORMS, f"model.norm={self.norm!r} is not one of {', '.join(NORMS)}")
        check(self.activation in ACTIVATIONS,
              f"model.activation={self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        check(math.isfinite(self.logit_softcap) and self.logit_softcap >= 0,
              f"model.logit_softcap={self.logit_softcap!r} must be >= 0 (0 turns it off)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"         # adamw, or muon: Muon on the hidden matrices, AdamW on the rest
    lr: float = 1e-3            # (AdamW's) peak learning rate, reached at the end of warmup
    min_lr: float = 1e-4        # floor the schedule decays to at the last step
    warmup_steps: int = 100
    schedule: str = "cosine"    # cosine (warmup + cosine) or wsd (warmup, stable, linear decay)
    decay_fraction: float = 0.2  # wsd: the linear decay takes this last fraction of train.steps
    weight_decay: float = 0.1   # decoupled, multiplied by lr (torch / optax convention)
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    clip_norm: float = 1.0      # global-norm clipping; 0 disables
    decay_embeddings: bool = True
    muon_lr: float = 0.02       # Muon's peak rate (Jordan et al.'s reference); the schedule scales it as lr
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0

    def __post_init__(self):
        from .optimizers import OPTIMIZERS, SCHEDULES  # they build on this module
        check(self.name in OPTIMIZERS, f"optim.name={self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        check(self.schedule in SCHEDULES, f"optim.schedule={self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr={self.lr!r} must be > 0")
        check(math.isfinite(self.muon_lr) and self.muon_lr > 0, f"optim.muon_lr={self.muon_lr!r} must be > 0")
        check(0 <= self.min_lr <= self.lr, f"optim.min_lr={self.min_lr!r} must be in [0, optim.lr={self.lr!r}]")
        check(self.warmup_steps >= 0, f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        check(0 < self.decay_fraction <= 1, f"optim.decay_fraction={self.decay_fraction!r} must be in (0, 1]")
        for n in ("weight_decay", "muon_weight_decay"):
            v = getattr(self, n)
            check(v >= 0, f"optim.{n}={v!r} must be >= 0")
        for n in ("b1", "b2", "muon_momentum"):
            v = getattr(self, n)
            check(0 <= v < 1, f"optim.{n}={v!r} must be in [0, 1)")
        check(self.eps > 0, f"optim.eps={self.eps!r} must be > 0")
        check(self.clip_norm >= 0, f"optim.clip_norm={self.clip_norm!r} must be >= 0 (0 disables)")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    steps: int = 2000
    grad_accum: int = 1           # micro-batches per optimizer step
    steps_per_call: int = 10      # optimizer steps per jitted call (lax.scan); same numbers as 1
    eval_every: int = 250
    checkpoint_every: int = 500
    keep_checkpoints: int = 2     # latest K kept, plus the best
    seed: int = 0
    label_smoothing: float = 0.0
    ema: float = 0.0              # decay of a moving average of the weights, evaluated, sampled and exported
                                  # in their place (e.g. 0.999; optim.py, ema_decay); 0 = off
    skip_nonfinite: bool = False  # skip a step whose loss/gradient is NaN/inf instead of stopping
    init_from: str = ""           # a run (folder or checkpoint) whose weights this run starts from (finetune.py)

    def __post_init__(self):
        check_positive(self, "train", "batch_size", "steps", "grad_accum", "steps_per_call",
                       "eval_every", "checkpoint_every", "keep_checkpoints")
        check_bounded(self, "train", "batch_size", "steps", "grad_accum", "steps_per_call")
        check(self.batch_size % self.grad_accum == 0,
              f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        check(0 <= self.label_smoothing < 1, f"train.label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        check(0 <= self.ema < 1, f"train.ema={self.ema!r} must be in [0, 1) (0 turns it off)")
        check(0 <= self.seed < 2**32, f"train.seed={self.seed} must be in [0, 2**32)")


def task_class(name):
    """The task registered under `name` (tasks.TASKS); the one place a name is looked up."""
    from .tasks import TASKS  # tasks builds on this module
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class RunConfig:
    task: str = "lm"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Any = None  # the task's own data section (its class's `Data`); None: its defaults

    def __post_init__(self):
        spec = task_class(self.task)
        if self.data is None:
            object.__setattr__(self, "data", spec.Data())
        check(type(self.data) is spec.Data, f"the data section of a {self.task} run must be a {spec.Data.__name__}")
        check(self.optim.warmup_steps < self.train.steps,
              f"optim.warmup_steps={self.optim.warmup_steps} must be smaller than train.steps={self.train.steps} "
              f"(for a short run, also pass --set optim.warmup_steps=N with N < {self.train.steps})")
        spec.check_config(self)
        n = approx_params(self.model, spec.stacks, spec.max_vocab(self))
        check(n <= MAX_PARAMS, f"the model would have ~{n:.3g} parameters, over the limit {MAX_PARAMS:.3g}")

    def to_dict(self) -> dict:
        """What config.json and every checkpoint hold."""
        return {"format": FORMAT, **dataclasses.asdict(self)}


def approx_params(m: ModelConfig, stacks: int, vocab: int) -> int:
    per_block = 4 * m.d_model * m.d_model + 2 * m.d_model * m.d_ff
    return stacks * m.n_layer * per_block + vocab * m.d_model + m.block_size * m.d_model


# ---------------------------------------------------------------- keys and values
def _section_class(cfg_or_task, section: str):
    if section == "data":
        spec = task_class(cfg_or_task if isinstance(cfg_or_task, str) else cfg_or_task.task)
        return spec.Data
    return {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}[section]


def _field_types(cls) -> dict[str, type]:
    return {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(cls)}


def _key_type(task: str, key: str) -> type:
    """The type of `section.key` for a run of `task`; a ConfigError naming the known keys
    (or the task that does use it) if there is none."""
    from .tasks import TASKS
    section, _, name = key.partition(".")
    types = _field_types(_section_class(task, section)) if section in SECTIONS else {}
    if name in types:
        return types[name]
    if section == "data":
        owners = [t for t, spec in TASKS.items() if name in _field_types(spec.Data)]
        if owners:
            raise ConfigError(f"{key} is a setting of the {owners[0]} task; the {task} task does not use it")
    known = [f"{s}.{k}" for s in SECTIONS for k in _field_types(_section_class(task, s))]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"unknown config key {key!r}; {hint}known keys: {', '.join(known)}")


def _parse_value(key: str, raw: Any, typ: type) -> Any:
    """Turn a --set string into the field's type, strictly; a JSON value must have it."""
    if isinstance(raw, str) and typ is not str:
        s = raw.strip()
        try:
            if typ is bool:
                if s.lower() in ("true", "1", "yes", "on"):
                    return True
                if s.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError
            v = typ(s)
            if typ is float and not math.isfinite(v):
                raise ValueError
            return v
        except ValueError:
            accepted = " (true/false, 1/0, yes/no, on/off)" if typ is bool else ""
            raise ConfigError(f"{key}={raw!r} is not a valid {typ.__name__}{accepted}") from None
    if typ is float and isinstance(raw, int) and not isinstance(raw, bool):  # an int is a valid float
        return float(raw)
    if type(raw) is not typ:
        raise ConfigError(f"{key}={raw!r} has type {type(raw).__name__}, expected {typ.__name__}")
    return raw


def describe_keys() -> list[str]:
    """'section.key  type  default' for every key a person may set (for --help)."""
    from .tasks import TASKS
    rows = [(f"{s}.{f.name}", f, "") for s, cls in (("model", ModelConfig), ("optim", OptimConfig),
                                                    ("train", TrainConfig)) for f in fields(cls)]
    rows += [(f"data.{f.name}", f, f" ({t} only)") for t, spec in TASKS.items() for f in fields(spec.Data)]
    return [f"{key:<26} {f.type:<6} {f.default!r}{only}" for key, f, only in rows if key not in DERIVED]


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any], *, allow_derived=False) -> RunConfig:
    """Return cfg with `section.key -> value` overrides applied and validated."""
    changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, raw in overrides.items():
        typ = _key_type(cfg.task, key)
        check(allow_derived or key not in DERIVED, f"{key} is derived from the data and cannot be set")
        section, _, name = key.partition(".")
        changes[section][name] = _parse_value(key, raw, typ)
    return replace(cfg, **{s: replace(getattr(cfg, s), **c) for s, c in changes.items() if c})


def parse_set_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        check(bool(eq and key), f"--set {item!r} is not of the form section.key=value")
        out[key.strip()] = value
    return out


def make_config(task: str, preset: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the task's preset, then the overrides, validated once as a whole (so
    a preset's train.steps and an override's optim.warmup_steps are checked together)."""
    spec = task_class(task)
    preset = preset or spec.default_preset
    check(preset in spec.presets,
          f"unknown preset {preset!r} for task {task!r}; choose from {', '.join(spec.presets)}")
    return apply_overrides(RunConfig(task=task), {**spec.presets[preset], **(overrides or {})})


# ---------------------------------------------------------------- JSON
def read_json(path) -> dict:
    """A JSON object from a file; a ConfigError naming the file for anything else."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (ValueError, OSError) as e:  # not JSON, not UTF-8, a folder
        raise ConfigError(f"{path} is not a valid config: {str(e).splitlines()[0]}") from None
    check(isinstance(d, dict), f"{path} must hold a JSON object, not {type(d).__name__}")
    return d


def _overrides(d: dict, task: str) -> dict[str, Any]:
    """A config's JSON object (all sections or some, either format) as `section.key ->
    value` for a run of `task`, with JSON's types checked (strings only for str keys)."""
    extra = set(d) - {"format", "task", *SECTIONS}
    check(not extra, f"unknown config section(s) {sorted(extra)}; known: task, {', '.join(SECTIONS)}")
    fmt = d.get("format", 1)
    check(fmt in (1, FORMAT), f"config format {fmt!r} is not one this version reads (1 or {FORMAT}); "
          "a newer scratchformer wrote it")
    out = {}
    for section in SECTIONS:
        sub = d.get(section, {})
        check(isinstance(sub, dict), f"config section {section!r} must be an object")
        out.update({f"{section}.{k}": v for k, v in sub.items()})
    if fmt == 1:
        out = _upgrade(out, task)
    for key, v in out.items():
        typ = _key_type(task, key)
        check(typ is str or not isinstance(v, str), f"{key}={v!r} has type str, expected {typ.__name__}")
    return out


def _upgrade(old: dict[str, Any], task: str) -> dict[str, Any]:
    """Format 1 -> 2: train.eval_windows becomes the LM's data.eval_windows, and the keys
    of the other task's data, which format 1 listed at their defaults, go."""
    from .tasks import TASKS
    own = _field_types(task_class(task).Data)
    defaults = {f"data.{f.name}": f.default for spec in TASKS.values() for f in fields(spec.Data)}
    out = {}
    for key, v in old.items():
        if key == "train.eval_windows":
            key = "data.eval_windows"
        if key.startswith("data.") and key.partition(".")[2] not in own and v == defaults.get(key, v):
            continue
        out[key] = v
    return out


def from_dict(d: Any) -> RunConfig:
    """Strictly rebuild a RunConfig from a config's JSON (either format): no unknown keys,
    exact types, bounds."""
    check(isinstance(d, dict), f"config must be a JSON object, got {type(d).__name__}")
    task = task_class(d.get("task")).name
    return apply_overrides(RunConfig(task=task), _overrides(d, task), allow_derived=True)


def from_file(path) -> RunConfig:
    """from_dict on a config.json, its errors naming the file."""
    d = read_json(path)
    try:
        return from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path} is not a valid config: {e}") from None


def overrides_from_file(path, task: str) -> dict[str, Any]:
    """`train --config FILE`: the settings in a JSON file (a run's config.json or its
    folder, or any part of one: {"model": {"n_layer": 2}}) as overrides, applied after
    the preset and before --set. A "task" in the file must be `task`; model.vocab_size
    is left out (the task derives it from the data). Types are checked as in from_dict;
    bounds and cross-field rules when make_config validates the whole. Errors name the
    file first (option "config")."""
    try:
        if Path(path).is_dir():  # a run folder stands for its config.json
            check((Path(path) / "config.json").is_file(), f"{path} is a folder without a config.json")
            path = Path(path) / "config.json"
        d = read_json(path)
        check(d.get("task", task) == task, f"{path} is a config for task {d.get('task')!r}, not {task!r}")
        try:
            overrides = _overrides(d, task)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    except ConfigError as e:
        raise ConfigError(str(e), option="config") from None
    return {k: v for k, v in overrides.items() if k not in DERIVED}


def cpu_note(cfg: RunConfig, preset: str, backend: str | None = None) -> str | None:
    """A line for settings that are meant for a GPU but about to run on a CPU."""
    if backend is None:
        import jax
        backend = jax.default_backend()
    if backend != "cpu":
        return None
    if preset == "gpu":  # the figures are the preset's own, whatever --set changed
        g = make_config(cfg.task, "gpu")
        m, t = g.model, g.train
        return (f"the gpu preset ({m.n_layer}x{m.d_model}, batch {t.batch_size} x {m.block_size}, {m.dtype}) is "
                f"sized for a GPU; on a 2-core CPU a step of it takes ~6 s, its {t.steps:,} steps "
                f"~{6 * t.steps / 3600:.0f} hours (the cpu preset is sized for a CPU)")
    if cfg.model.dtype == "bfloat16":
        return ("model.dtype=bfloat16 is slower than float32 on a CPU; it is meant for GPUs (model.products="
                "bfloat16 rounds only the matrix products' inputs: faster on a CPU with AMX)")
    return None
