"""Matrix-product rates in JAX on the default device: the denominators of the GPU checks'
"share of the measured matmul rate" (benchmarks/gpu_check.sh, benchmarks/gpu_profile.sh).

    python benchmarks/matmul_rate.py --sizes 8192 --dtypes bfloat16 float32
    python benchmarks/matmul_rate.py --sizes 8192 --forms f32out chain ones

Forms: `one` (one N^3 product per call, random data), `f32out` (bfloat16 inputs, float32
output), `chain` (20 chained products in one call: launch and transfer costs amortised), `ones`
(all-ones data: less switching activity, so a higher clock on a power-limited GPU). Prints the
median and best of 10 timed calls (5 for `chain`) after 3 warm-up calls, in TFLOP/s.
"""
import argparse
import time

import jax
import jax.numpy as jnp


def call_seconds(f, args, reps: int) -> list[float]:
    """The seconds of `reps` calls f(*args) after 3 warm-up calls, shortest first."""
    for _ in range(3):
        jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return sorted(ts)


def rate(f, args, flop: float, reps: int = 10) -> tuple[float, float]:
    """(median, best) TFLOP/s of f(*args) doing `flop` floating-point operations a call."""
    ts = call_seconds(f, args, reps)
    return flop / ts[len(ts) // 2] / 1e12, flop / ts[0] / 1e12


def measure(n: int, dtype, form: str) -> tuple[float, float]:
    flop = 2 * n**3
    if form == "ones":
        ones = jnp.ones((n, n), dtype)
        return rate(jax.jit(lambda x, y: x @ y), (ones, ones), flop)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    if form == "one":
        return rate(jax.jit(lambda x, y: x @ y), (a, b), flop)
    if form == "f32out":
        return rate(jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)), (a, b), flop)
    if form == "chain":
        scale = jnp.asarray(0.01, dtype)  # keeps the chained values finite
        chain = jax.jit(lambda x, y: jax.lax.fori_loop(0, 20, lambda i, c: (c @ y) * scale, x))
        return rate(chain, (a, b), 20 * flop, reps=5)
    raise ValueError(f"unknown form {form!r}")  # main's choices hold the forms


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16"], choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--forms", nargs="+", default=["one"], choices=["one", "f32out", "chain", "ones"])
    args = ap.parse_args(argv)
    print("jax", jax.__version__, jax.devices())
    for n in args.sizes:
        for dtype in args.dtypes:
            for form in args.forms:
                med, best = measure(n, jnp.dtype(dtype), form)
                print(f"matmul {n}^3 {dtype} {form}: median {med:.4g} TFLOP/s, best {best:.4g}", flush=True)


if __name__ == "__main__":
    main()
