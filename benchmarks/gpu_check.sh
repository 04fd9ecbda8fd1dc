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
# A/B of query-blocked causal attention (on by default on the CPU, off in the gpu preset):
# 300 steps each, the trained-in time is what to compare.
for ab in 0 128 0 128; do
  $PY -m scratchformer.cli train lm --preset gpu --data "$DATA" --out "$RUNS/ab-$ab" --no-progress \
    --steps 300 --set model.attn_block=$ab --set train.eval_every=300 2>&1 | grep trained \
    | sed "s/^/attn_block=$ab: /" | tee -a "$OUT/attn_block_ab.txt"
  rm -rf "$RUNS/ab-$ab"
done
for dt in bfloat16 float32; do
  $PY -m scratchformer.cli train lm --preset gpu --data "$DATA" --out "$RUNS/run-$dt" \
    --no-progress --set model.dtype=$dt ${STEPS:+--steps $STEPS} 2>&1 | grep -E "step |validation|trained" \
    | tee "$OUT/train-$dt.log"
  cp "$RUNS/run-$dt/summary.json" "$OUT/summary-$dt.json"
  $PY -m scratchformer.cli sample "$RUNS/run-$dt" --prompt "ROMEO:" --tokens 300 > "$OUT/sample-$dt.txt"
done
