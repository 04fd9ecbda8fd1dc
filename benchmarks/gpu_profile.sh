#!/usr/bin/env bash
# A second prepared GPU check (after benchmarks/gpu_check.sh has been run once), run on a
# GPU machine from the repository root, about 6 minutes:
#   1. bf16 matmul rates in JAX at 4096^3 / 8192^3 / 16384^3, and at 8192^3 with f32
#      output, 20 chained products per call and all-ones data (why 528 TFLOP/s where
#      PyTorch measured ~790 on the same kind of machine);
#   2. the memory check's GPU branch: a model far too big for the GPU must stop with one
#      line, exit 2, and no run folder;
#   3. benchmarks/profile_step.py on the `gpu` preset, with dropout and without (the
#      tables, and every kernel's time in $OUT/ops-*.json);
#   4. the test suite on the GPU (8 workers; the Tiny Shakespeare tests skip there).
# Needs Tiny Shakespeare at $DATA (default .gpudata/tinyshakespeare.txt; carry .gpudata).
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DATA=${DATA:-.gpudata/tinyshakespeare.txt}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s"; }
stamp info
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
timeout 70 python3 - <<'PY' 2>&1 | grep -v Warning
import time, jax, jax.numpy as jnp
from scratchformer import memory
d = jax.devices()[0]
print("jax", jax.__version__, d, "free by memory_stats:", memory.format_bytes(memory.device_available_bytes(d)))
def rate(f, args, flop, reps=10):
    for _ in range(3): jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); jax.block_until_ready(f(*args)); ts.append(time.perf_counter() - t)
    ts.sort(); return flop / ts[len(ts)//2] / 1e12, flop / ts[0] / 1e12
for n in (4096, 8192, 16384):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.bfloat16)
    med, best = rate(jax.jit(lambda x, y: x @ y), (a, b), 2 * n**3)
    print(f"bf16 {n}^3 one product per call: median {med:.1f} best {best:.1f} TFLOP/s")
    if n == 8192:
        med, best = rate(jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32)), (a, b), 2 * n**3)
        print(f"bf16 {n}^3 f32 accumulate out: median {med:.1f} best {best:.1f}")
        def chain(x, y):
            return jax.lax.fori_loop(0, 20, lambda i, c: (c @ y) * jnp.bfloat16(0.01), x)
        med, best = rate(jax.jit(chain), (a, b), 20 * 2 * n**3, reps=5)
        print(f"bf16 {n}^3 20 chained products per call: median {med:.1f} best {best:.1f}")
        z = jnp.zeros((n, n), jnp.bfloat16) + jnp.bfloat16(1)
        med, best = rate(jax.jit(lambda x, y: x @ y), (z, z), 2 * n**3)
        print(f"bf16 {n}^3 all-ones data: median {med:.1f} best {best:.1f}")
PY
stamp "memory check: a model too big for the GPU"
rm -rf /tmp/big
timeout 120 python3 -m scratchformer train lm --preset gpu --data "$DATA" --out /tmp/big \
  --set model.d_model=8192 --set model.d_ff=32768 --set model.n_head=8 2>&1 | tail -3
echo "exit ${PIPESTATUS[0]}; run folder: $(ls -d /tmp/big 2>&1)"
stamp "profile of the gpu preset"
timeout 150 python3 benchmarks/profile_step.py --preset gpu --calls 4 --top 30 --dump "$OUT"/ops-gpu.json 2>&1 | grep -v Warning
stamp "profile of the gpu preset, dropout 0"
timeout 100 python3 benchmarks/profile_step.py --preset gpu --set model.dropout=0 --calls 4 --top 12 --dump "$OUT"/ops-gpu-nodrop.json 2>&1 | grep -v Warning
stamp "tests on the GPU"
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tail -40
stamp done
