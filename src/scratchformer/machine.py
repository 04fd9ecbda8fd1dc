"""Which machine this is, for filing a measured figure under its machine kind: the CPU's
model name, its cores and the vector extensions that change which kernels XLA runs.

The same model trains at very different speeds on CPUs that Linux names alike: two 2-core
machines both called "AMD EPYC", one with AVX-512 and one with AVX2 only, differ by about
2.7x (BENCHMARKS.md, "Machines").
Read from Linux's /proc/cpuinfo; elsewhere the model is what `platform` says and the
flags are empty.
"""

from __future__ import annotations

import functools
import os
import platform

# The extensions named in `describe`, most capable first: AMX tiles for bfloat16, AVX-512,
# AVX2. (model.products=auto looks for bfloat16 instructions itself: kernels.has_bf16_products.)
_EXTENSIONS = (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def parse_cpuinfo(text: str) -> tuple[str, frozenset]:
    """(model name, flags) of the first processor listed in a /proc/cpuinfo text."""
    lines = text.splitlines()
    field = lambda name: next((ln.split(":", 1)[1].strip() for ln in lines
                               if ":" in ln and ln.split(":", 1)[0].strip() == name), "")
    return field("model name"), frozenset(field("flags").split())


@functools.cache
def _cpuinfo() -> tuple[str, frozenset]:
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return "", frozenset()


def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux lists them (empty where it does not)."""
    return _cpuinfo()[1]


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def extensions() -> list[str]:
    """The vector extensions of `_EXTENSIONS` that this CPU has, most capable first."""
    flags = cpu_flags()
    return [name for flag, name in _EXTENSIONS if flag in flags]


def describe() -> str:
    """One line: "AMD EPYC, 2 cores, AVX2 (no AVX-512)", "Intel Xeon ..., 2 cores, AVX-512 and AMX"."""
    n = cores()
    parts = [cpu_model(), f"{n} core" + ("s" if n != 1 else "")]
    if cpu_flags():
        ext = extensions()
        if "AVX-512" in ext:
            parts.append(" and ".join(e for e in ("AVX-512", "AMX") if e in ext))
        else:
            parts.append("AVX2 (no AVX-512)" if "AVX2" in ext else "no AVX2")
    return ", ".join(parts)


def as_dict() -> dict:
    """What `describe` says, as fields (for `bench --json`)."""
    return {"cpu": cpu_model(), "cores": cores(), "extensions": extensions()}
