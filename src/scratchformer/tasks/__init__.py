"""Tasks: what the training loop, `eval`, `sample`, `plot` and `bench` drive. A task
knows its data (where it comes from, how a batch is drawn on device), its model and
loss, how it is evaluated and sampled, and what a checkpoint must carry to use the
model again; its module also holds its config's data section and its presets. `TASKS`
is the one registry of names: a new task is a module here and a line below, and
nothing else compares task names."""

from ..errors import ConfigError, UsageError, flag
from .base import Task
from .lm import LMTask
from .reverse import ReverseTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ReverseTask, LMTask)}


def task_class(name) -> type[Task]:
    """The task registered under `name`; the one place a name is looked up."""
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]


def task_options(task, given: dict, kind: str) -> dict:
    """The options of a command for `task` (`kind`: "sample_options" or "eval_options"):
    `given` (name -> value, None where not given) with the task's defaults filled in; a
    UsageError names an option that another task's runs take."""
    own = getattr(task, kind)
    foreign = [k for k, v in given.items() if v is not None and k not in own]
    if foreign:
        owner = next(n for n, t in TASKS.items() if foreign[0] in getattr(t, kind))
        takes = ", ".join(map(flag, own)) if own else "no options"
        raise UsageError(f"{', '.join(map(flag, foreign))} {'is' if len(foreign) == 1 else 'are'} for {owner} "
                         f"runs; {task.name} runs take {takes}")
    return {k: own[k] if given.get(k) is None else given[k] for k in own}


__all__ = ["TASKS", "LMTask", "ReverseTask", "Task", "task_class", "task_options"]
