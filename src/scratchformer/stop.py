"""Stopping a training run cleanly on Ctrl-C (SIGINT) or SIGTERM.

The first signal only sets a flag: the training loop finishes the jitted call in
flight, saves a checkpoint at that step and stops (TrainingInterrupted), so
`--resume` continues exactly where it left off. A second signal acts as usual
(KeyboardInterrupt for SIGINT, termination for SIGTERM). Only single-process runs
install the handlers: a checkpoint of a multi-process run needs every process, and a
signal reaches one of them.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """`StopRequest().install()` catches the signals until `restore()`; `.signum` is
    the number of the first one caught, or None."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                if signal.getsignal(s) is not signal.SIG_IGN:  # a signal the shell ignores stays ignored
                    self._previous[s] = signal.signal(s, self._catch)
        return self

    def _catch(self, signum, frame) -> None:
        self.signum = signum
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back (a second signal then acts at once)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM: the run stopped after saving a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path, run: Path):
        super().__init__(f"{signal.Signals(signum).name}: stopped at step {step}, saved {checkpoint}; "
                         f"to continue, run the same command with --out {run} --resume")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
