"""The command line's re-execution with glibc's huge-page tunable (hugepages.py):
when it applies, that it keeps the user's settings and opt-out, and that the
tunable really cuts the page faults of a large XLA buffer allocated per call."""

import os
import subprocess
import sys

import pytest

from scratchformer import hugepages as hp
from scratchformer.cli import main

GLIBC = (2, 36)


@pytest.mark.parametrize("env, glibc, mode, expect", [
    ({}, GLIBC, "madvise", True),
    ({}, (2, 35), "madvise", True),
    ({}, (2, 34), "madvise", False),           # no such tunable before 2.35
    ({}, None, "madvise", False),              # not glibc
    ({}, GLIBC, "always", False),              # every mapping gets huge pages already
    ({}, GLIBC, "never", False),
    ({}, GLIBC, None, False),                  # no THP in this kernel
    ({hp.OPT_OUT: "0"}, GLIBC, "madvise", False),
    ({hp.OPT_OUT: "1"}, GLIBC, "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise", False),  # the user's choice stands
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, GLIBC, "madvise", True),
])
def test_wanted(env, glibc, mode, expect):
    assert hp.wanted(env, glibc, mode) is expect


def test_with_tunable_keeps_other_tunables():
    assert hp.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    env = hp.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "y"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "X": "y"}
    assert not hp.wanted(env, GLIBC, "madvise")  # so a re-executed process never re-executes again


def test_thp_mode(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hp.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hp.thp_mode(str(f)) == "always"
    assert hp.thp_mode(str(tmp_path / "missing")) is None


def _applies_here() -> bool:
    return hp.wanted({}, hp.glibc_version(), hp.thp_mode())


REEXEC = ("import os; from scratchformer.hugepages import reexec_if_wanted, status; "
          "reexec_if_wanted(); print(os.environ.get('GLIBC_TUNABLES'), status())")


def _python(code, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hp.OPT_OUT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**base, **env}, timeout=300, check=True).stdout.split()


@pytest.mark.skipif(not _applies_here(), reason="needs glibc >= 2.35 and THP in madvise mode")
def test_reexec_sets_the_tunable_once_and_respects_opt_out():
    assert _python(REEXEC) == ["glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=1"]
    assert _python(REEXEC, **{hp.OPT_OUT: "0"}) == ["None", "off"]
    assert _python(REEXEC, GLIBC_TUNABLES="glibc.malloc.arena_max=4") == [
        "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=1"]


FAULTS = """
import resource, jax, jax.numpy as jnp
f = jax.jit(lambda x: x * 2.0)  # a new 128 MB output buffer at each call
x = jnp.ones(32 * 2**20)
f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) // 3)
"""


@pytest.mark.skipif(not _applies_here(), reason="needs glibc >= 2.35 and THP in madvise mode")
def test_tunable_cuts_page_faults_of_a_per_call_buffer():
    small_pages = int(_python(FAULTS)[0])
    huge_pages = int(_python(FAULTS, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")[0])
    # 128 MB in 4 KiB pages is 32,768 faults per call; in 2 MiB pages 64
    assert small_pages > 20_000, small_pages
    assert huge_pages < small_pages / 20, (huge_pages, small_pages)


def test_called_from_python_never_reexecutes(monkeypatch):
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
    assert main([]) == 2  # no command: prints the help
