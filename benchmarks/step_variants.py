"""Training step time of a preset under several settings, measured in one process.

Each variant (the preset with its --set values) has its LM training call compiled on
random tokens, as `scratchformer bench` does; then the calls run in turn, `--calls`
times each, so that every variant sees the same machine state (this machine's speed
drifts by tens of percent within minutes). Prints the median ms a step of each, and
its ratio to the first variant's.

    .venv/bin/python benchmarks/step_variants.py --preset cpu-quick \\
        --variant w128 model.d_model=128 model.d_ff=512 model.n_head=4 \\
        --variant w96 --variant w96-ff288 model.d_ff=288
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from scratchformer.bench import random_token_training
from scratchformer.runconfig import make_config, parse_set_args


def compiled(cfg) -> dict:
    """The config's jitted training call, compiled and called once (warm), with its state."""
    k = cfg.train.steps_per_call
    call, state, data, _ = random_token_training(cfg, k)
    call = call.lower(state, data).compile()
    state, m = call(state, data)
    jax.block_until_ready(m)
    return {"call": call, "state": state, "data": data, "steps": k}


def step_times(cfgs: dict, calls: int) -> dict:
    """Median ms a step of each named config, their calls made in turn."""
    runs = {name: compiled(cfg) for name, cfg in cfgs.items()}
    times = {name: [] for name in cfgs}
    for _ in range(calls):
        for name, r in runs.items():
            t0 = time.perf_counter()
            r["state"], m = r["call"](r["state"], r["data"])
            jax.block_until_ready(m)
            times[name].append((time.perf_counter() - t0) / r["steps"] * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), required=True,
                   help="a name, then the --set values that make it (repeatable; none: the preset itself)")
    p.add_argument("--calls", type=int, default=15, help="timed calls of each variant (default 15)")
    a = p.parse_args()
    cfgs = {v[0]: make_config("lm", a.preset, parse_set_args(v[1:])) for v in a.variant}
    ms = step_times(cfgs, a.calls)
    first = next(iter(ms.values()))
    for name, t in ms.items():
        print(f"{name}: {t:.2f} ms/step, {t / first:.2f}x {a.variant[0][0]} (median of {a.calls} calls, in turn)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
