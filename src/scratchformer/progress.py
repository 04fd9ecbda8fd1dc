"""What a person watches while a command runs: a tqdm bar on a terminal or in a
notebook, plain lines where stderr is a file or a pipe (a log, CI), which a bar would
fill with carriage returns on a single line."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def _interactive() -> bool:
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class TrainingBar:
    """Training progress: `report(step, text)` after each jitted call's metrics arrive,
    `update(n)` as steps are dispatched, `write(line)` for lines that stay (evaluations)."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled,
                         file=sys.stderr, mininterval=0.5, smoothing=0.1)

    def report(self, step: int, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def write(self, line: str) -> None:
        self._bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


class LogLines:
    """TrainingBar's interface, printing `step S/N: loss=...` about every tenth of the run,
    at a multiple of the steps per jitted call (metrics arrive a call at a time)."""

    def __init__(self, total: int, initial: int, per_call: int):
        self.total, self.every = total, max(per_call, total // 10 // per_call * per_call)
        self.next = (initial // self.every + 1) * self.every

    def report(self, step: int, text: str) -> None:
        if step >= self.next or step == self.total:
            print(f"step {step}/{self.total}: {text}", file=sys.stderr, flush=True)
            self.next = (step // self.every + 1) * self.every

    def update(self, n: int) -> None:
        pass

    def write(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def training_bar(total: int, initial: int, *, enabled: bool, per_call: int):
    """A TrainingBar on a terminal, LogLines elsewhere; with enabled=False, evaluation lines only."""
    if enabled and not _interactive():
        return LogLines(total, initial, per_call)
    return TrainingBar(total, initial, enabled=enabled)


def counter(total: int, *, shown: bool, unit: str, desc: str):
    """A bar for work that takes several seconds or more (`shown`: evaluation, tokenizing), on a terminal
    or in a notebook only; erased when done (the result line is the command's output)."""
    return tqdm(total=total, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5, desc=desc, disable=not (shown and _interactive()))
