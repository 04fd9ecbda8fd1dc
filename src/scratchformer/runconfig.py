"""A run's config, composed: the task's defaults, then its preset, then a `--config`
file, then `--set section.key=value`, validated once as a whole by the same code, and
config.json files of either format read back strictly (no unknown keys, exact types).

This module sits above the tasks (each brings its data section and presets) and below
everything that starts or opens a run.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import jax

from .config import DERIVED, FORMAT, SECTIONS, LoraConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig, check
from .errors import ConfigError
from .tasks import TASKS, task_class


# Every section but data, which is the task's own.
COMMON = {"model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "lora": LoraConfig}


def _section_class(task: str, section: str):
    return task_class(task).Data if section == "data" else COMMON[section]


def _field_types(cls) -> dict[str, type]:
    return {f.name: {"int": int, "float": float, "bool": bool, "str": str}[f.type] for f in fields(cls)}


def _key_type(task: str, key: str) -> type:
    """The type of `section.key` for a run of `task`; a ConfigError naming the known keys
    (or the task that does use it) if there is none."""
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


def describe_presets() -> str:
    """Each task's presets, its default marked (for --help)."""
    return "; ".join(f"{n}: " + ", ".join(k + (" (default)" if k == t.default_preset else "") for k in t.presets)
                     for n, t in TASKS.items())


def describe_keys() -> list[str]:
    """'section.key  type  default' for every key a person may set (for --help)."""
    rows = [(f"{s}.{f.name}", f, "") for s, cls in COMMON.items() for f in fields(cls)]
    rows += [(f"data.{f.name}", f, f" ({t} only)") for t, spec in TASKS.items() for f in fields(spec.Data)]
    return [f"{key:<30} {f.type:<6} {f.default!r}{only}" for key, f, only in rows if key not in DERIVED]


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
    return apply_overrides(defaults(task), {**spec.presets[preset], **(overrides or {})})


def defaults(task: str) -> RunConfig:
    """A run of `task` with every default: the sections' own and the task's data section's."""
    return RunConfig(task=task, data=task_class(task).Data())


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
        out = upgrade(out, task)
    for key, v in out.items():
        typ = _key_type(task, key)
        check(typ is str or not isinstance(v, str), f"{key}={v!r} has type str, expected {typ.__name__}")
    return out


def upgrade(old: dict[str, Any], task: str) -> dict[str, Any]:
    """Format 1 -> 2: train.eval_windows becomes the LM's data.eval_windows, and the keys
    of the other task's data, which format 1 listed at their defaults, go."""
    own = _field_types(task_class(task).Data)
    default_values = {f"data.{f.name}": f.default for spec in TASKS.values() for f in fields(spec.Data)}
    out = {}
    for key, v in old.items():
        if key == "train.eval_windows":
            key = "data.eval_windows"
        if key.startswith("data.") and key.partition(".")[2] not in own and v == default_values.get(key, v):
            continue
        out[key] = v
    return out


def from_dict(d: Any) -> RunConfig:
    """Strictly rebuild a RunConfig from a config's JSON (either format): no unknown keys,
    exact types, bounds."""
    check(isinstance(d, dict), f"config must be a JSON object, got {type(d).__name__}")
    task = task_class(d.get("task")).name
    return apply_overrides(defaults(task), _overrides(d, task), allow_derived=True)


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
    backend = backend or jax.default_backend()
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
                "bfloat16 rounds only the matrix products' inputs: faster on a CPU with bfloat16 instructions)")
    return None
