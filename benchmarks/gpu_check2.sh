#!/usr/bin/env bash
# Second GPU check: the benchmark after the matmul change, and the `gpu` preset
# shortened to 2,500 steps (so the cosine schedule ends near where the 5,000-step
# run reached its best validation loss), in bf16 then f32.
set -uo pipefail
DATA=${DATA:-.gpudata/tinyshakespeare.txt}
OUT=${OUT:-/tmp/gpu-out}
RUNS=/tmp/gpu-runs
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -m scratchformer.cli bench --json | tee "$OUT/bench.json"
for dt in bfloat16 float32; do
  $PY -m scratchformer.cli train lm --preset gpu --steps 2500 --data "$DATA" --out "$RUNS/run-$dt" \
    --no-progress --set model.dtype=$dt 2>&1 | grep -E "step |validation|trained" | tee "$OUT/train2500-$dt.log"
  cp "$RUNS/run-$dt/summary.json" "$OUT/summary2500-$dt.json"
done
