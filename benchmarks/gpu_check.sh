#!/usr/bin/env bash
# One prepared GPU check (run on a GPU machine from the repository root), in order
# of importance; a part runs only if its time limit fits before $BUDGET s (default 540):
#   1. the GPU, JAX, and its bf16 / f32 matmul rates at 8192^3 (the MFU denominators);
#   2. the `gpu` LM preset as shipped (bf16, 2,500 steps), each evaluation timed, so that
#      the time to validation loss <= 1.47 can be read off, and a 300-token sample;
#   3. `scratchformer bench --json` (f32 and bf16 on a GPU);
#   4. two rounds of 300-step A/Bs against the preset (query-blocked attention, no
#      dropout, the rbg PRNG), each run's last progress line being training tokens/s
#      without compilation or evaluation; between them the preset with rotary positions,
#      after them the preset in float32.
# Needs Tiny Shakespeare at $DATA (default .gpudata/tinyshakespeare.txt).
# STEPS=N overrides the preset's step count. Progress goes to a pipe, so training prints
# `step S/N: loss=..., tok/s=...` lines rather than a bar.
set -uo pipefail
DATA=${DATA:-.gpudata/tinyshakespeare.txt}
OUT=${OUT:-/tmp/gpu-out}
RUNS=/tmp/gpu-runs
mkdir -p "$OUT" "$RUNS"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "== $1 at $(( $(date +%s) - T0 )) s" | tee -a "$OUT/parts.txt"; }

stamp info
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 60 $PY benchmarks/matmul_rate.py --sizes 8192 --dtypes bfloat16 float32 2>&1 | tee -a "$OUT/gpu.txt"

# Runs a part only if its time limit still fits before the deadline ($BUDGET s after start).
fits() { [ $(( T0 + ${BUDGET:-540} - $(date +%s) )) -ge "$1" ] || { stamp "skipped: $2"; return 1; }; }

train() {  # name, time limit, extra args...
  local name=$1 limit=$2; shift 2
  fits "$limit" "train $name" || return
  stamp "train $name"
  timeout "$limit" $PY -m scratchformer train lm --preset gpu --data "$DATA" --out "$RUNS/$name" \
    ${STEPS:+--steps $STEPS} "$@" 2>&1 | grep -E "step |validation|trained|rror" \
    | tee "$OUT/train-$name.log"
  cp "$RUNS/$name/summary.json" "$OUT/summary-$name.json" 2>/dev/null
}

# 300 steps, evaluated only at the end: the `step 300/300` line's tokens/s is training alone.
ab() {  # label, environment assignments ("" for none), extra args...
  local label=$1 envs=$2; shift 2
  fits 45 "A/B $label" || return
  timeout 45 env $envs $PY -m scratchformer train lm --preset gpu --data "$DATA" --out "$RUNS/ab" \
    --steps 300 --set train.eval_every=300 "$@" 2>&1 | grep -E "step 300/|trained|rror" \
    | sed "s/^/$label: /" | tee -a "$OUT/ab.txt"
  rm -rf "$RUNS/ab"
}
ab_round() {
  stamp "A/B round $1"
  ab base ""
  ab attn_block=128 "" --set model.attn_block=128
  ab dropout=0 "" --set model.dropout=0
  ab prng=rbg JAX_DEFAULT_PRNG_IMPL=rbg
}

train bf16 150
fits 40 sample && timeout 40 $PY -m scratchformer sample "$RUNS/bf16" --prompt "ROMEO:" --tokens 300 > "$OUT/sample-bf16.txt"
fits 150 bench && { stamp bench; timeout 150 $PY -m scratchformer bench --json | tee "$OUT/bench.json"; }
ab_round 1
train bf16-rope 100 --set model.positions=rope
ab_round 2
train f32 130 --set model.dtype=float32
stamp done
