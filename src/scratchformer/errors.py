"""The errors a person can cause, one family: `ScratchformerError` and its kinds.

The command line prints one of these as one line on stderr and exits 2. Anything
else that escapes is a bug in scratchformer and keeps its traceback. Messages name
the bad value and what would be accepted; a command-line option is named by the
command line (cli.py), not here, since these functions are called from Python too.
"""


class ScratchformerError(Exception):
    """Something a person gave us cannot be used; the message says what and why.

    `option`: the parameter the bad value came through (e.g. "data" for a text file),
    where the message starts with that value; the command line puts the option's flag
    in front ("--data x.txt: no such file")."""

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.option = option


def flag(option: str) -> str:
    """The command-line flag of an `option` name: "init_from" -> "--init-from"."""
    return "--" + option.replace("_", "-")


def one_line(e: ScratchformerError) -> str:
    """What the command line prints for `e`: the option it came through, then the message."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if e.option:
        msg = f"{flag(e.option)} {msg}"
    if isinstance(e, ResumeMismatch):
        msg += ": leave out --preset, --config, --set, --steps and --seed, or start a new run"
    return f"scratchformer: error: {msg}"


class ConfigError(ScratchformerError):
    """A configuration value is not acceptable."""


class DataError(ScratchformerError):
    """Bad input data: missing, empty, undecodable, too short, changed since training."""


class CheckpointError(ScratchformerError):
    """A run folder or checkpoint is missing, truncated, corrupted, or of another run."""


class OutOfMemory(ScratchformerError):
    """A program needs more memory than the machine has free."""


class UsageError(ScratchformerError):
    """Arguments that do not fit together (or do not fit the run they are for)."""


class ResumeMismatch(CheckpointError):
    """A run would be resumed with another config than it was started with."""
