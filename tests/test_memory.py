"""memory.check_fits: XLA's footprint of a compiled program against what is free."""

import jax
import jax.numpy as jnp
import pytest

from scratchformer import memory
from scratchformer.errors import ScratchformerError


def _compiled(donate: bool):
    f = jax.jit(lambda x: x * 2.0, donate_argnums=0 if donate else ())
    return f.lower(jax.ShapeDtypeStruct((1000, 1000), jnp.float32)).compile()


def test_program_bytes_counts_arguments_outputs_and_aliasing():
    # 4 MB in, 4 MB out; donated, the output reuses the argument's buffer
    assert memory.program_bytes(_compiled(donate=False)) == 8_000_000
    assert memory.program_bytes(_compiled(donate=True)) == 4_000_000


def test_check_fits_raises_only_when_the_need_exceeds_what_is_free():
    c, cpu = _compiled(donate=False), jax.devices("cpu")[0]
    memory.check_fits(c, [cpu], what="w", advice="a", available=lambda d: 8_000_000)
    memory.check_fits(c, [cpu], what="w", advice="a", available=lambda d: None)  # unknown: silent
    with pytest.raises(memory.OutOfMemory) as e:
        memory.check_fits(c, [cpu], what="doubling", advice="use less", available=lambda d: 7_999_999)
    assert str(e.value) == "doubling needs ~8 MB, more than the 8 MB free in this machine's memory; use less"
    # CPU devices of one process share the host's memory: two of them need twice as much
    with pytest.raises(memory.OutOfMemory, match="needs ~16 MB"):
        memory.check_fits(c, [cpu, cpu], what="w", advice="a", available=lambda d: 12_000_000)
    assert isinstance(e.value, ScratchformerError)  # the command line's one-line, exit-2 errors
    # arguments that already exist are counted in the footprint but no longer free
    memory.check_fits(c, [cpu], what="w", advice="a", allocated=memory.tree_bytes({"x": jnp.zeros((1000, 1000))}),
                      available=lambda d: 4_000_000)


def test_host_available_bytes_takes_the_lower_of_meminfo_and_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n")
    cg = tmp_path / "cg"
    cg.mkdir()
    assert memory.host_available_bytes(str(meminfo), str(cg)) == 20_000_000 * 1024  # no cgroup files
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.current").write_text("5\n")
    assert memory.host_available_bytes(str(meminfo), str(cg)) == 20_000_000 * 1024  # unlimited
    (cg / "memory.max").write_text("1000000000\n")
    (cg / "memory.current").write_text("400000000\n")
    assert memory.host_available_bytes(str(meminfo), str(cg)) == 600_000_000
    assert memory.host_available_bytes(str(tmp_path / "none"), str(tmp_path / "none")) is None
