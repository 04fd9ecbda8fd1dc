"""JAX's persistent compilation cache, on by default for the command line, in a folder
that only this user can write.

Each command compiles its training step, evaluation and sampling programs afresh, seconds
of a short run (docs/cli.md, "Compiled programs between commands"); JAX's disk cache loads
them instead when the same program was compiled before. A cache entry is a compiled program
that JAX loads and runs, so anyone who can write to the folder can run code in your
processes: the cache is used only in a folder of this user's own ($XDG_CACHE_HOME or
~/.cache, then scratchformer/jax), created with mode 0700, and only while it and the folder
above it belong to this user and no one else may write to them; otherwise it stays off.
JAX keys an entry on the program, the JAX and XLA versions, the device and the compile
options, so an entry is never loaded for another program or version. The cache is bounded
(MAX_BYTES, least recently used entries go first).

A JAX_COMPILATION_CACHE_DIR set by the user is left as it is; SCRATCHFORMER_COMPILATION_CACHE=0
turns the default off. Plain environment work: it runs before JAX is imported, which reads
these variables.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

OPT_OUT = "SCRATCHFORMER_COMPILATION_CACHE"
DIR_VAR = "JAX_COMPILATION_CACHE_DIR"
MAX_BYTES = 2 << 30


def cache_folder(environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scratchformer" / "jax"


def private(folder: Path) -> bool:
    """Whether `folder` and its parent are directories owned by this user that no one
    else may write to (the parent: so that the folder cannot be swapped for another)."""
    try:
        for d in (folder, folder.parent):
            st = d.lstat()
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return True


def enable_default(environ=os.environ) -> Path | None:
    """Point JAX's compilation cache at this user's private folder (made if missing) unless
    the user chose otherwise; returns the folder, or None where the cache stays as it was."""
    if environ.get(DIR_VAR) or environ.get(OPT_OUT) == "0" or not hasattr(os, "getuid"):
        return None
    folder = cache_folder(environ)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    if not private(folder):
        return None
    environ[DIR_VAR] = str(folder)
    environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(MAX_BYTES))
    return folder
