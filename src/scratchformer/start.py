"""What `train` starts: a new run from a preset, a fine-tune of another run's weights
(--init-from; with --lora R, LoRA adapters beside them), or the continuation of the run
in --out (--resume); its config composed and its task built on its data, before
anything is compiled or written."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

from . import finetune
from .errors import UsageError
from .runconfig import apply_overrides, cpu_note, make_config, overrides_from_file, parse_set_args
from .runs import saved_config, training_source
from .tasks import task_class


class Start(NamedTuple):
    task: Any          # the task on its data, task.cfg the run's config
    out: str           # the run folder
    note: str | None   # a line for settings meant for a GPU about to run on a CPU


def training_start(task: str, *, out: str | None = None, preset: str | None = None, config: str | None = None,
                   sets: list[str] = (), steps: int | None = None, seed: int | None = None,
                   init_from: str | None = None, lora: int | None = None, resume: bool = False,
                   data: str | None = None) -> Start:
    """The run that `train TASK` with these options starts (each argument is the option
    of the same name; `sets`: the --set items)."""
    overrides = {**(overrides_from_file(config, task) if config else {}), **parse_set_args(sets)}
    overrides.update({k: str(v) for k, v in (("train.steps", steps), ("train.seed", seed), ("lora.rank", lora))
                      if v is not None})
    spec = task_class(task)
    continued = resume and not (preset or init_from)  # the run in --out, as it was started
    preset = preset or (spec.default_preset if not init_from else spec.lora_preset if lora else spec.finetune_preset)
    if resume and not out:
        raise UsageError("--resume needs --out DIR, the run to continue")
    out = out or f"runs/{task}-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    init = finetune.source(init_from, task) if init_from else None
    if continued and (not overrides or (Path(out) / "config.json").is_file()):
        # its own config, with what was given on top: a resumed run keeps its config, so
        # whatever given differs is what the error names (not a preset's other values)
        cfg = apply_overrides(saved_config(out, task), overrides)
    elif init is not None:
        cfg = finetune.config(task, preset, overrides, init, init_from)
    else:
        cfg = make_config(task, preset, overrides)
    if data is None and resume:  # the run's own text, as its checkpoint records it
        data = training_source(out)
        if data is not None and not Path(data).is_file():
            raise UsageError(f"--resume: the run's text file {data} is gone; pass --data FILE with the same text")
    if init is None and cfg.train.init_from:  # a resumed fine-tune reads its data as its source did
        init = finetune.source(cfg.train.init_from, task)
    return Start(spec.from_data(cfg, data, like=init), out, cpu_note(cfg, preset))
