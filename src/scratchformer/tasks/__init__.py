"""Tasks: what the training loop, `eval`, `sample`, `plot` and `bench` drive. A task
knows its data (where it comes from, how a batch is drawn on device), its model and
loss, how it is evaluated and sampled, and what a checkpoint must carry to use the
model again. `TASKS` is the one registry of names: a new task is a module here and
a line below, and nothing else compares task names."""

from .base import Task
from .lm import LMTask
from .reverse import ReverseTask

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (ReverseTask, LMTask)}

__all__ = ["TASKS", "LMTask", "ReverseTask", "Task"]
