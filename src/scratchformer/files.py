"""Writing files whole or not at all, as an ordinary file would be written.

A reader (another process, or this one after a kill) sees either the old file or the
complete new one: write a temp file in the same folder, fsync, rename over the target,
fsync the folder. New files and folders get the permissions that open() and mkdir()
would give under the process's umask, not mkstemp's private 0600.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from .errors import CheckpointError


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umasked(mode: int) -> int:
    """`mode` less the process's umask: what open() and mkdir() would give a new file or
    folder. mkstemp and mkdtemp make theirs private (0600, 0700) whatever the umask. Read
    from /proc where it can be: setting the umask to read it would, for that moment, give
    any file another thread creates the mode 0666."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):  # not Linux, or a kernel before 4.7
        umask = os.umask(0)
        os.umask(umask)
    return mode & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either the old file or the whole new one,
    with an ordinary new file's permissions."""
    with atomic_writer(path) as f:
        f.write(data)


@contextmanager
def atomic_writer(path: Path):
    """A binary file to write in pieces (a file larger than one wants in memory at once)
    that appears at `path` whole when the block ends, as atomic_write_bytes writes one;
    nothing changes at `path` if the block raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            with suppress(PermissionError):  # a file system without modes (vfat): keep what it gives
                os.fchmod(f.fileno(), umasked(0o666))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(path.parent)


@contextmanager
def atomic_folder(out: Path, *, option: str = "out"):
    """Build a new folder `out` whole or not at all: yields a temporary folder beside it,
    renamed to `out` when the block ends without an exception, removed otherwise. Missing
    parent folders are made, as `train --out runs/x` makes runs/, and removed again if
    the block fails."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new folder", option=option)
    made = missing_parents(out, option=option)
    for folder in reversed(made):
        folder.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    os.chmod(tmp, umasked(0o777))  # the result is an ordinary folder, not mkdtemp's private one
    done = False
    try:
        yield tmp
        os.rename(tmp, out)
        fsync_dir(out.parent)
        done = True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for folder in made:  # deepest first
                with suppress(OSError):
                    folder.rmdir()


def missing_parents(out: Path, *, option: str = "out") -> list[Path]:
    """The folders above `out` that do not exist yet, deepest first; a one-line error
    (for `option`) where something above `out` is a file, not a folder."""
    made, parent = [], Path(out).parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    if not parent.is_dir():
        raise CheckpointError(f"{out}: {parent} is a file, not a folder", option=option)
    return made


def strict_json(obj, **kw) -> str:
    """json.dumps in strict JSON, which jq, browsers and most languages read: a float
    that is not finite (Python would write NaN or Infinity) becomes null."""
    def finite(x):
        if isinstance(x, float):
            return x if np.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x
    return json.dumps(finite(obj), allow_nan=False, **kw)
