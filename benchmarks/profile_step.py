"""Where a training step's time goes, by line of scratchformer's source.

Builds the LM's jitted training call for a preset (random tokens, as the bench does:
speed does not depend on the text), traces a few calls with `jax.profiler`, and adds
up the time of every compiled operation under the line of scratchformer's code that
produced it. XLA records, for each instruction of the optimized program, the Python
stack that traced it (the HLO's StackFrames table); the innermost frame inside the
package names the line, and an op that autodiff made (its op_name holds `transpose(`)
is counted as that line's backward. Prints the measured step time, the traced
operations' total per step, and a table of the lines that take the most time.

    .venv/bin/python benchmarks/profile_step.py                      # cpu preset
    .venv/bin/python benchmarks/profile_step.py --preset cpu-quick --set model.dropout=0.1
    .venv/bin/python benchmarks/profile_step.py --by op               # by XLA operation instead
    .venv/bin/python benchmarks/profile_step.py --preset gpu --dump ops.json   # on a GPU

On a CPU, operations on XLA's two worker threads overlap, so the traced total can
exceed the step time; the shares are of the traced total. On a GPU only the device's
kernel events count (the host's events for the same instructions are their launches);
that branch is written from the trace format and not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax

from scratchformer.bench import random_token_training
from scratchformer.runconfig import make_config, parse_set_args

CONTAINERS = {"while", "call", "conditional"}  # their time is their body's, counted there


def _table(lines: list[str], name: str) -> dict[int, str]:
    """One numbered section of the HLO text's header (FileNames, StackFrames, ...)."""
    if name not in lines:
        return {}
    out = {}
    for line in lines[lines.index(name) + 1:]:
        key, _, value = line.partition(" ")
        if not key.isdigit():
            break
        out[int(key)] = value
    return out


def has_stack_frames(hlo: str) -> bool:
    return bool(_table(hlo.split("\n"), "StackFrames"))


def source_of_instructions(hlo: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (where, opcode)}: `where` is 'file.py:line function' of the
    innermost stack frame in the package (' (backward)' added for autodiff's ops)."""
    lines = hlo.split("\n")
    files = {k: v.strip('"') for k, v in _table(lines, "FileNames").items()}
    funcs = {k: v.strip('"').split(".")[-1] for k, v in _table(lines, "FunctionNames").items()}
    locs, frames = {}, {}
    for k, v in _table(lines, "FileLocations").items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locs[k] = (files.get(int(f["file_name_id"]), "?"), funcs.get(int(f["function_name_id"]), "?"), int(f["line"]))
    for k, v in _table(lines, "StackFrames").items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        frames[k] = (int(f["file_location_id"]), int(f["parent_frame_id"]) - 1)  # parent ids are one-based

    def where(frame: int) -> str:
        for _ in range(64):  # innermost first
            if frame not in frames:
                break
            (path, func, line), frame = locs[frames[frame][0]], frames[frame][1]
            if "/scratchformer/" in path and not path.endswith(("/train.py", "/bench.py")):
                return f"{path.split('/scratchformer/')[-1]}:{line} {func}"
        return "(other)"

    out = {}
    # `name = type opcode(`; a type may be a tuple with spaces, e.g. a GPU gemm's
    # `(bf16[64,256]{1,0}, s8[4194304]{0}) custom-call(`
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?[\]})] ([\w\-]+)\(")
    for line in lines:
        m = instruction.match(line)
        if m:
            frame, op_name = re.search(r"stack_frame_id=(\d+)", line), re.search(r'op_name="([^"]*)"', line)
            w = where(int(frame.group(1))) if frame else "(other)"
            out[m.group(1)] = (w + (" (backward)" if op_name and "transpose(" in op_name.group(1) else ""),
                               m.group(2))
    return out


def trace_durations(log_dir: str) -> dict[str, float]:
    """Microseconds per event name (or its hlo_op argument) over the whole trace. Where
    the trace has device streams (a GPU's kernels), only their events count: the host's
    events for the same instructions are launches, not the work."""
    path = glob.glob(f"{log_dir}/plugins/profile/*/*.trace.json.gz")[0]
    events = json.load(gzip.open(path))["traceEvents"]
    process = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name" and "args" in e}
    devices = {pid for pid, name in process.items() if name.startswith("/device:")}
    total = defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and (not devices or e.get("pid") in devices):
            total[(e.get("args") or {}).get("hlo_op", e["name"])] += e.get("dur", 0.0)
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--calls", type=int, default=5, help="jitted calls traced (each of train.steps_per_call steps)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--by", choices=("line", "op"), default="line")
    p.add_argument("--dump", metavar="FILE", help="also write every traced instruction "
                   "(name, line, opcode, ms per step) to FILE as JSON")
    a = p.parse_args()
    cfg = make_config("lm", a.preset, {"train.steps": 1_000_000, **parse_set_args(a.sets)})
    k = cfg.train.steps_per_call
    call, state, data, cfg = random_token_training(cfg, k)
    compiled = call.lower(state, data).compile()
    if not has_stack_frames(compiled.as_text()):
        print(f"profile_step.py: the optimized HLO of jax {jax.__version__} has no stack-frame table to attribute "
              "instructions with (jax 0.10.2 has one; 0.6.2 does not)", file=sys.stderr)
        return 2
    source = source_of_instructions(compiled.as_text())
    for _ in range(2):  # warm-up
        state, m = compiled(state, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(a.calls):
        t = time.perf_counter()
        state, m = compiled(state, data)
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t) / k * 1e3)
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            for _ in range(a.calls):
                state, m = compiled(state, data)
            jax.block_until_ready(m)
        durations = trace_durations(log_dir)
    steps = a.calls * k
    groups, counts = defaultdict(float), defaultdict(int)
    for name, us in durations.items():
        if name in source and source[name][1] not in CONTAINERS:
            where, opcode = source[name]
            key = where if a.by == "line" else f"{name} ({opcode}; {where})"
            groups[key] += us / steps / 1e3
            counts[key] += 1
    total = sum(groups.values())
    if a.dump:
        rows = sorted(([n, *source[n], us / steps / 1e3] for n, us in durations.items()
                       if n in source and source[n][1] not in CONTAINERS), key=lambda r: -r[3])
        Path(a.dump).write_text(json.dumps({"device": jax.devices()[0].device_kind, "instructions": rows}))
    m_ = cfg.model
    print(f"preset {a.preset}: {m_.n_layer} layers x {m_.d_model}, T={m_.block_size}, batch {cfg.train.batch_size}, "
          f"{jax.devices()[0].device_kind}; step {statistics.median(times):.2f} ms (median of {a.calls} calls "
          f"untraced), traced operations {total:.2f} ms per step")
    if not total:
        print("no trace event matched an instruction of the compiled program; the longest events: "
              + ", ".join(f"{n} ({us:.0f} us)" for n, us in sorted(durations.items(), key=lambda kv: -kv[1])[:8]))
        return 1
    print(f"{'share':>6} {'ms/step':>8} {'ops':>4}  {'line of scratchformer' if a.by == 'line' else 'operation'}")
    for key, ms in sorted(groups.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"{100 * ms / total:5.1f}% {ms:8.3f} {counts[key]:4d}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
