"""Starting a run from another run's weights (`train TASK --init-from RUN`): fine-tuning.

The new run takes the source run's architecture (every model key but FREE) and its
tokenizer, and starts its own optimizer and schedule at step 0 from the source's
weights; the rest of its config comes from the preset (`gpt2-finetune` by default for
a language model), --config and --set as for any run. `train.init_from` records the
source in config.json, so a resumed fine-tune continues from its own checkpoints.
With lora.rank > 0 (`--lora R`) the source's weights stay frozen and rank-R adapters
train beside them (lora.py); `gpt2-lora` is then the default preset.
"""

from __future__ import annotations

from dataclasses import fields

from . import checkpoint as ckpt
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, ScratchformerError, flag
from .runconfig import apply_overrides, make_config
from .runs import base_weights, checkpoint_path, config_of
from .tasks import task_class

# Model keys a fine-tune may set for itself: they change no weight's shape (a shorter
# block_size keeps the first rows of a learned position table, as nanoGPT's crop_block_size).
FREE = ("dropout", "block_size", "dtype", "products", "attn_block", "mtp_weight")


def source(path, task: str, *, option: str = "init_from"):
    """The task (config and tokenizer) of the run that `--init-from path` names, from its
    checkpoint's header; one-line errors (for `option`) for a missing run or one of
    another task."""
    try:
        file = checkpoint_path(path)
        meta = ckpt.read_meta(file)
        cfg = config_of(meta, file)
        init = task_class(cfg.task).from_meta(cfg, meta.get("task_meta") or {})
    except ScratchformerError as e:
        raise type(e)(str(e), option=option) from None
    if init.name != task:
        raise CheckpointError(f"{path} is a {init.name} run; {flag(option)} takes {task} runs only",
                              option=option)
    return init


def config(task: str, preset: str | None, overrides: dict, init, path):
    """The fine-tune's RunConfig: the preset and overrides, with the source run's
    architecture (`init.cfg.model`) and train.init_from = path."""
    arch = {f"model.{f.name}": getattr(init.cfg.model, f.name) for f in fields(ModelConfig) if f.name not in FREE}
    asked = make_config(task, preset, {**overrides, "train.init_from": str(path)})
    # A key given with the source's own value (a fine-tune's config.json read again) is no change.
    changed = sorted(k for k in overrides if k in arch and getattr(asked.model, k[6:]) != arch[k])
    if changed:
        raise ConfigError(f"{', '.join(changed)} cannot be set with --init-from: the run keeps the architecture of "
                          f"{path} (only model.{', model.'.join(FREE)} may change)")
    cfg = apply_overrides(asked, arch, allow_derived=True)
    m, old = cfg.model, init.cfg.model
    if m.positions == "learned" and m.block_size > old.block_size:
        if "model.block_size" not in overrides:  # the preset's (gpt2-finetune: 256): as long as the table allows
            return apply_overrides(cfg, {"model.block_size": old.block_size})
        raise ConfigError(f"model.block_size={m.block_size} is longer than the position table of {path} "
                          f"({old.block_size} positions); choose at most {old.block_size}")
    return cfg


def start_params(cfg):
    """(params, identity) of the weights a fresh run of `cfg` starts from when
    train.init_from names a run (runs.base_weights): a fine-tune's first params, a
    LoRA run's frozen base."""
    source(cfg.train.init_from, cfg.task)
    return base_weights(cfg)
