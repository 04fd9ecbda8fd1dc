"""Transparent huge pages for XLA's CPU buffers, through glibc's malloc tunable.

XLA's CPU runtime allocates each call's temporary buffer afresh (hundreds of MB
for a mid-sized model) and frees it at the end, so every call first-touches it
again, one page fault per 4 KiB page (BENCHMARKS.md, "Huge pages"). Linux kernels
set to transparent huge pages "madvise" (the common default) give 2 MiB pages
only to memory that asks for them, and glibc >= 2.35 asks for them when started
with GLIBC_TUNABLES=glibc.malloc.hugetlb=1: 512 times fewer faults.

Tunables are read once at process start, so the command line re-executes
itself with the tunable set (`reexec_if_wanted`), before importing JAX. Set
SCRATCHFORMER_HUGEPAGES=0 to opt out; a GLIBC_TUNABLES that already names the
tunable is left as it is. Code that imports the package from its own
interpreter can export the variable before starting Python instead.
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "SCRATCHFORMER_HUGEPAGES"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, or None elsewhere (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def wanted(env, glibc: tuple[int, int] | None, mode: str | None) -> bool:
    """Whether a re-exec with the tunable would change anything: glibc >= 2.35, THP in
    "madvise" mode ("always" already gives huge pages, "never" gives none), no opt-out
    and no setting of the tunable by the user."""
    return (glibc is not None and glibc >= (2, 35) and mode == "madvise"
            and env.get(OPT_OUT, "1") != "0" and TUNABLE not in env.get("GLIBC_TUNABLES", ""))


def with_tunable(env) -> dict:
    """A copy of env whose GLIBC_TUNABLES also sets glibc.malloc.hugetlb=1."""
    env = dict(env)
    env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1") if t)
    return env


def reexec_if_wanted() -> None:
    """Replace this process by the same command with the tunable set, when `wanted`.
    Returns normally when nothing would change or the command cannot be repeated."""
    argv = getattr(sys, "orig_argv", None)
    if not sys.executable or not argv or not wanted(os.environ, glibc_version(), thp_mode()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, with_tunable(os.environ))
    except OSError:
        return  # could not re-execute: carry on without huge pages


def status() -> str:
    """How this process gets huge pages, for benchmark reports: "glibc.malloc.hugetlb=1",
    "thp always", or "off"."""
    if glibc_version() is not None and f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        return f"{TUNABLE}=1"
    return "thp always" if thp_mode() == "always" else "off"
