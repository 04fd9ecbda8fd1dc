#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine from the repository root):
# the benchmark, then the `gpu` LM preset in bfloat16 and float32, timing each
# evaluation so that the time to validation loss <= 1.47 can be read off.
# Needs Tiny Shakespeare at $DATA (default .gpudata/tinyshakespeare.txt).
# STEPS=N overrides the preset's 5,000 steps (the second check used STEPS=2500).
set -uo pipefail
DATA=${DATA:-.gpudata/tinyshakespeare.txt}
OUT=${OUT:-/tmp/gpu-out}
RUNS=/tmp/gpu-runs
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
$PY -m scratchformer.cli bench --json | tee "$OUT/bench.json"
for dt in bfloat16 float32; do
  $PY -m scratchformer.cli train lm --preset gpu --data "$DATA" --out "$RUNS/run-$dt" \
    --no-progress --set model.dtype=$dt ${STEPS:+--steps $STEPS} 2>&1 | grep -E "step |validation|trained" \
    | tee "$OUT/train-$dt.log"
  cp "$RUNS/run-$dt/summary.json" "$OUT/summary-$dt.json"
  $PY -m scratchformer.cli sample "$RUNS/run-$dt" --prompt "ROMEO:" --tokens 300 > "$OUT/sample-$dt.txt"
done
