"""Will a compiled program fit in memory? Asked after XLA has compiled it and before
anything big is allocated, so that a model, batch or sample too large for the machine
is a one-line error instead of an out-of-memory kill (on Linux the kernel's OOM killer
ends the process with SIGKILL: no message, and a run folder left half-made).

XLA's buffer assignment knows a program's footprint exactly: its arguments and
outputs (less the outputs that reuse donated arguments) plus one block of temporaries
(`Compiled.memory_analysis()`). What is free: a GPU's own allocator limit less what is
in use; on a CPU the host's MemAvailable (or a cgroup's limit, if lower), shared by all
of the process's CPU devices.
"""

from __future__ import annotations

from pathlib import Path

import jax

from .errors import OutOfMemory


def program_bytes(compiled) -> int | None:
    """Peak bytes one device needs to run `compiled` (a jax Compiled), or None when the
    backend does not say."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    try:
        limit = Path(root, "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path(root, "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def host_available_bytes(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    known = [b for b in (_meminfo_available(meminfo), _cgroup_available(cgroup)) if b is not None]
    return min(known) if known else None


def device_available_bytes(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return None


def format_bytes(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def tree_bytes(tree) -> int:
    """Bytes of the arrays in a pytree (what one copy of it takes)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def check_fits(compiled, devices, *, what: str, advice: str, allocated: int = 0, available=None) -> None:
    """Raise OutOfMemory naming `what` and `advice` when `compiled`, run on `devices`
    (the local ones it is spread over), needs more than is free. `allocated`: bytes per
    device of its arguments that already exist (they are counted in the program's
    footprint and are no longer free). Silent when either figure is unknown.
    `available(device) -> bytes | None` replaces the measurement (for tests)."""
    need = program_bytes(compiled)
    devices = list(devices)
    if need is None or not devices:
        return
    need -= allocated
    if devices[0].platform == "cpu":  # every CPU device of the process lives in host memory
        need, free = need * len(devices), (available or (lambda d: host_available_bytes()))(devices[0])
        where = "in this machine's memory"
    else:
        free = min((b for b in map(available or device_available_bytes, devices) if b is not None), default=None)
        where = f"on each {devices[0].platform.upper()}"
    if free is not None and need > free:
        raise OutOfMemory(f"{what} needs ~{format_bytes(need)}, more than the {format_bytes(free)} free {where}; {advice}")
