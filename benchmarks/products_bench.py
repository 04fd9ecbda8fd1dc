"""Training step time with model.products=float32 against bfloat16, per preset, and the
matrix-product rates behind it, measured in one process.

For each preset the LM's jitted training call is compiled twice (random tokens, as
`scratchformer bench` does), then the two are called in turn, `--calls` times each, so
that both see the same machine state; prints the median ms a step of each and their
ratio. Then, at the preset's first feed-forward shape (rows = batch x context), the
rate of x @ w in float32 and with bfloat16 inputs and float32 sums, with neither
operand transposed (the forward product) and with one transposed (the backward's
g @ w^T and x^T @ g).

    .venv/bin/python benchmarks/products_bench.py                    # cpu-quick, cpu-quick-classic, cpu
    .venv/bin/python benchmarks/products_bench.py --preset cpu --calls 5
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from matmul_rate import rate  # this folder's scripts: run as a script
from step_variants import step_times as variant_step_times

from scratchformer import machine
from scratchformer.runconfig import make_config

SETTINGS = ("float32", "bfloat16")


def step_times(preset: str, calls: int) -> dict:
    return variant_step_times({s: make_config("lm", preset, {"model.products": s}) for s in SETTINGS}, calls)


def _rate(f, args, flop: float) -> float:
    """Median GFLOP/s of jit(f)(*args) over 20 calls."""
    return 1000 * rate(jax.jit(f), args, flop, reps=20)[0]


def product_rates(n: int, d: int, e: int) -> dict:
    """GFLOP/s of an n x d by d x e product: float32, and bfloat16 inputs rounded inside
    the call with float32 sums, as plain (NN), as g @ w^T and as x^T @ g."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w, g = (jax.random.normal(k[0], (n, d)), jax.random.normal(k[1], (d, e)),
               jax.random.normal(k[2], (n, e)))
    bf, f32 = jnp.bfloat16, jnp.float32
    flop = 2.0 * n * d * e
    mixed = {
        "x @ w": (lambda x, w: jnp.dot(x.astype(bf), w.astype(bf), preferred_element_type=f32), (x, w)),
        "g @ w^T": (lambda g, w: jnp.dot(g.astype(bf), w.T.astype(bf), preferred_element_type=f32), (g, w)),
        "x^T @ g": (lambda x, g: jnp.dot(x.T.astype(bf), g.astype(bf), preferred_element_type=f32), (x, g)),
    }
    plain = {"x @ w": (lambda x, w: x @ w, (x, w)), "g @ w^T": (lambda g, w: g @ w.T, (g, w)),
             "x^T @ g": (lambda x, g: x.T @ g, (x, g))}
    return {name: (_rate(*plain[name], flop), _rate(*mixed[name], flop)) for name in plain}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", help="preset (repeatable); default cpu-quick, cpu-quick-classic, cpu")
    p.add_argument("--calls", type=int, default=7, help="timed calls of each setting (default 7)")
    a = p.parse_args()
    print(f"{machine.describe()}; {jax.device_count()} device(s) ({jax.default_backend()}), JAX {jax.__version__}")
    for preset in a.preset or ["cpu-quick", "cpu-quick-classic", "cpu"]:
        ms = step_times(preset, a.calls)
        m, t = make_config("lm", preset).model, make_config("lm", preset).train
        print(f"{preset}: float32 {ms['float32']:.2f} ms/step, bfloat16 products {ms['bfloat16']:.2f} ms/step: "
              f"{ms['float32'] / ms['bfloat16']:.2f}x (median of {a.calls} calls each, in turn)")
        n, d, e = t.batch_size * m.block_size, m.d_model, m.d_ff
        rates = product_rates(n, d, e)
        print(f"  {n} x {d} x {e} products, GFLOP/s float32 / bfloat16 inputs: "
              + ", ".join(f"{k} {f:.0f} / {b:.0f}" for k, (f, b) in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
