"""`scratchformer bench`: training and sampling speed against this machine's own
matmul peak, all measured in one process and one run.

Model FLOPs per optimizer step (PaLM, Chowdhery et al. 2022, app. B; nanoGPT's
estimate_mfu): 6 * N * tokens + 12 * L * D * T * tokens, where N counts every
parameter except the position table (a tied embedding once), L layers, D width,
T context. The second term is attention's QK^T and AV, counted over the full
(non-causal) T x T matrix, as nanoGPT does. Achieved GFLOP/s = FLOPs / step time;
peak_fraction = achieved / the best f32 GFLOP/s of a jitted 2048^2 matmul.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np

from . import hugepages, machine
from .data.text import sample_batch
from .decode import generate
from .models import init_lm
from .parallel import make_mesh, replicated
from .runconfig import make_config
from .tasks.base import DrawnOnDevice
from .train import init_sharded_state, make_train_call

SHAPES = {
    # nanoGPT's documented CPU settings for Tiny Shakespeare
    "nano-cpu": {"model.n_layer": 4, "model.n_head": 4, "model.d_model": 128, "model.d_ff": 512,
                 "model.block_size": 64, "train.batch_size": 12},
    "gpt-small": {"model.n_layer": 6, "model.n_head": 6, "model.d_model": 384, "model.d_ff": 1536,
                  "model.block_size": 256, "train.batch_size": 8},
}
VOCAB = 65  # Tiny Shakespeare's characters
# The step timed: AdamW with clipping on GPT-2's block, products in the model's dtype, as
# nanoGPT trains and as benchmarks/torch_nanogpt.py times it, so the two compare. Not the
# `cpu` preset, whose Muon spends a large share of a CPU step in Newton-Schulz's small
# products (BENCHMARKS.md, "What `bench` times").
BENCH_PRESET = "cpu-classic"


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = min(_timed(lambda: f(a, b).block_until_ready()) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_flops_per_step(cfg) -> float:
    m = cfg.model
    shapes = jax.eval_shape(lambda: init_lm(jax.random.PRNGKey(0), m))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) - m.block_size * m.d_model
    tokens = cfg.train.batch_size * m.block_size
    return 6.0 * n * tokens + 12.0 * m.n_layer * m.d_model * m.block_size * tokens


class _RandomTokens(DrawnOnDevice):
    """Stand-in for LMTask: windows of a fixed random token stream (speed does not
    depend on the text)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def device_data(self):
        return {"train": jax.random.randint(jax.random.PRNGKey(0), (200_000,), 0, VOCAB)}

    def sample_batch(self, data, key, batch):
        return sample_batch(key, data["train"], batch=batch, block=self.cfg.model.block_size)


def random_token_training(cfg, steps_per_call: int):
    """The LM's jitted training call for `cfg` (its vocabulary set to VOCAB) on random
    tokens, with its initial state and data: (call, state, data), not yet compiled."""
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=VOCAB))
    task, mesh = _RandomTokens(cfg), make_mesh()
    call, shardings = make_train_call(cfg, task, steps_per_call, mesh)
    state = init_sharded_state(cfg, shardings)
    return call, state, jax.device_put(task.device_data(), replicated(mesh)), cfg


def bench_train(name: str, *, steps_per_call: int, calls: int, peak: float, dtype: str = "float32") -> dict:
    over = {**SHAPES[name], "train.steps": 10_000, "model.dropout": 0.0, "model.dtype": dtype,
            "model.products": "float32"}
    call, state, data, cfg = random_token_training(make_config("lm", BENCH_PRESET, over), steps_per_call)
    # compile_s: tracing + lowering + XLA compilation, timed on their own; first_call_s:
    # the whole first call (compilation plus steps_per_call steps), as a user waits for it.
    t0 = time.perf_counter()
    call = call.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    state, m = call(state, data)
    jax.block_until_ready(m)
    first_call_s = time.perf_counter() - t0
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        state, m = call(state, data)
        jax.block_until_ready(m)
        times.append((time.perf_counter() - t0) / steps_per_call)
    ms = statistics.median(times) * 1e3
    flops = model_flops_per_step(cfg)
    gflops = flops / (ms / 1e3) / 1e9
    tokens = cfg.train.batch_size * cfg.model.block_size
    return {"name": name, "dtype": dtype, "ms_per_step": round(ms, 3), "tokens_per_s": round(tokens / ms * 1e3, 1),
            "model_flops_per_step": flops, "gflops": round(gflops, 2), "peak_fraction": round(gflops / peak, 4),
            "compile_s": round(compile_s, 3), "first_call_s": round(first_call_s, 3),
            "steps_per_call": steps_per_call, "steps_timed": steps_per_call * calls}


def sampling_model():
    """(model config, parameters) of the gpt-small LM that sampling is timed on."""
    cfg = replace(make_config("lm", BENCH_PRESET, SHAPES["gpt-small"]).model, vocab_size=VOCAB, dropout=0.0,
                  products="float32")
    return cfg, init_lm(jax.random.PRNGKey(0), cfg)


def bench_sample(*, n_tokens: int, reps: int) -> dict:
    cfg, params = sampling_model()
    prompt = np.zeros((1,), np.int32)
    out = {}
    for label, cache in (("cached", True), ("uncached", False)):
        generate(params, cfg, prompt, n_tokens, use_cache=cache)  # compile
        times = [_timed(lambda: generate(params, cfg, prompt, n_tokens, use_cache=cache)) for _ in range(reps)]
        out[f"{label}_tokens_per_s"] = round(n_tokens / statistics.median(times), 1)
    out["speedup"] = round(out["cached_tokens_per_s"] / out["uncached_tokens_per_s"], 2)
    out["tokens"] = n_tokens
    return out


def run(quick: bool = False, dtypes=None) -> dict:
    """All figures in one process. On an accelerator bfloat16 rows are added (on a CPU
    bf16 is slower than f32, so they are left out there)."""
    if dtypes is None:
        dtypes = ("float32",) if jax.default_backend() == "cpu" else ("float32", "bfloat16")
    # Rounded once, here, so that every peak_fraction is the printed GFLOP/s over the printed peak.
    peak = round(matmul_peak_gflops(reps=3 if quick else 10), 1)
    train = []
    for dt in dtypes:
        train.append(bench_train("nano-cpu", steps_per_call=10, calls=3 if quick else 15, peak=peak, dtype=dt))
        train.append(bench_train("gpt-small", steps_per_call=2, calls=2 if quick else 10, peak=peak, dtype=dt))
    sample = bench_sample(n_tokens=200 if quick else 1000, reps=1 if quick else 3)
    return {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "machine": machine.as_dict(),
            "devices": jax.device_count(), "hugepages": hugepages.status(), "matmul_peak_gflops": peak,
            "train": train, "sample": sample}


def main(as_json: bool = False, quick: bool = False) -> int:
    r = run(quick=quick)
    if as_json:
        print(json.dumps(r))
        return 0
    print(f"machine: {machine.describe()}; JAX {jax.__version__}")
    print(f"device: {r['device']} ({r['backend']}, {r['devices']} device(s)); huge pages: {r['hugepages']}; "
          f"matmul peak {r['matmul_peak_gflops']:.1f} GFLOP/s (f32, 2048^2)")
    print(f"{'shape':<10} {'dtype':<9} {'ms/step':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'of peak':>8} {'compile s':>10} "
          f"{'1st call s':>10}")
    for t in r["train"]:
        print(f"{t['name']:<10} {t['dtype']:<9} {t['ms_per_step']:>9.2f} {t['tokens_per_s']:>10,.0f} "
              f"{t['gflops']:>9.1f} {100 * t['peak_fraction']:>7.1f}% {t['compile_s']:>10.2f} {t['first_call_s']:>10.2f}")
    s = r["sample"]
    print(f"sampling gpt-small, {s['tokens']} tokens: {s['cached_tokens_per_s']:,.0f} tok/s with KV cache, "
          f"{s['uncached_tokens_per_s']:,.0f} tok/s without ({s['speedup']:.1f}x)")
    return 0
