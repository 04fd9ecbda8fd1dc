"""The machine line that `bench` prints and figures are filed under: parsed from
/proc/cpuinfo texts of the three CPU kinds the project is measured on."""

import pytest

from scratchformer import kernels, machine

# Abridged from the machines' /proc/cpuinfo (the flags that matter, among others).
AMD_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2 vaes\n\nprocessor\t: 1\n"
AMD_AVX512 = "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512f avx512dq avx512_bf16\n"
INTEL_AMX = ("model name\t: Intel(R) Xeon(R) Processor\n"
             "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n")


@pytest.mark.parametrize("text, line, extensions", [
    (AMD_AVX2, "AMD EPYC, 2 cores, AVX2 (no AVX-512)", ["AVX2"]),
    (AMD_AVX512, "AMD EPYC, 2 cores, AVX-512", ["AVX-512", "AVX2"]),
    (INTEL_AMX, "Intel(R) Xeon(R) Processor, 2 cores, AVX-512 and AMX", ["AMX", "AVX-512", "AVX2"]),
    ("model name\t: Old\nflags\t\t: fpu sse2\n", "Old, 2 cores, no AVX2", []),
], ids=["amd-avx2", "amd-avx512", "intel-amx", "old"])
def test_the_machine_line_names_the_cpu_and_its_vector_extensions(monkeypatch, text, line, extensions):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: machine.parse_cpuinfo(text))
    monkeypatch.setattr(machine, "cores", lambda: 2)
    assert machine.describe() == line
    assert machine.as_dict() == {"cpu": line.split(",")[0], "cores": 2, "extensions": extensions}
    # what model.products=auto decides by: AMX or AVX-512's BF16 (both listed in these texts)
    assert kernels.has_bf16_products() is ("avx512_bf16" in text)


def test_without_cpuinfo_the_line_has_no_extensions(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("", frozenset()))
    assert machine.extensions() == [] and machine.cpu_model()  # platform's name, or "unknown CPU"
    assert machine.describe().count(",") == 1


def test_this_machine_is_described():
    d = machine.as_dict()
    assert d["cores"] >= 1 and d["cpu"] and machine.describe().startswith(d["cpu"])
