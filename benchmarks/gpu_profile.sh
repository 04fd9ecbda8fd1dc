#!/usr/bin/env bash
# The prepared GPU check for the time-to-quality goal on one GPU (validation loss <= 1.47
# within 15 s of training; README, "Results"), run on a GPU machine from the repository root.
# Parts in order of importance; a part runs only if its time limit fits before $BUDGET s
# (default 540) after the start, so a 10-minute limit on the whole keeps every finished part:
#   1. the GPU, JAX, and the bf16 matmul rate at 8192^3 (the denominator of "share of the
#      measured bf16 matmul rate");
#   2. benchmarks/ablation.py at the `gpu` preset, seed 0, evaluated every 125 steps on the
#      whole validation split: the step and training seconds (compilation excluded, the
#      evaluations included) at which the loss first reached 1.50 / 1.47. The preset as
#      shipped (AdamW, dropout 0.2, 2,500 steps), then Muon with the `cpu` preset's settings
#      (decay 0.2 on its matrices, the weights' average at 0.98) for 1,500 steps, and the same
#      with `cpu-record`'s recipe on top (every window once an epoch, one multi-token prediction
#      module, head-wise attention gates), and with model.products=bfloat16 (Newton-Schulz
#      stacked by shape, bfloat16 products: fewer, larger launches);
#   3. benchmarks/profile_step.py on the preset and with optim.name=muon, unstacked and
#      stacked: ms a step untraced (to set against part 1's rate) and where it goes (every
#      kernel's time in ops-*.json), and benchmarks/attention_bench.py at the preset's shape:
#      one layer's attention as the model computes it against jax.nn.dot_product_attention
#      (XLA's, cuDNN's fused kernel), forward and backward;
#   4. Muon for 1,000 steps, and for 1,500 with dropout 0.1 (part 2's other recipes);
#   5. bf16 matmul rates in other forms (why JAX's bf16 rate is below PyTorch's on this kind
#      of GPU: BENCHMARKS.md, "NVIDIA H200"), the memory check's GPU branch (a model too
#      big for the GPU must stop with one line, exit 2, and no run folder), the tests on the GPU.
# Needs Tiny Shakespeare at $DATA (default .gpudata/tinyshakespeare.txt; git ignores .gpudata).
# DRY=1 runs every part but the tests with a tiny model and few steps (the memory check at its
# own size), on any machine: it checks the script, not the GPU (PY=.venv/bin/python on a CPU).
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DATA=${DATA:-.gpudata/tinyshakespeare.txt}
OUT=${OUT:-/tmp/gpu-out}    # gets two files: log.txt (all that is printed) and files.tgz (the rest)
RUNS=${RUNS:-/tmp/gpu-runs}  # the run folders
KEEP=${KEEP:-/tmp/gpu-keep}  # JSON and kernel dumps, packed into $OUT/files.tgz at each part
PY=${PY:-python3}
mkdir -p "$OUT" "$RUNS" "$KEEP"
exec > >(tee -a "$OUT/log.txt") 2>&1
T0=$(date +%s)
# Each part starts by packing what the parts before it wrote, so a run stopped at its time
# limit still brings back every finished part.
stamp() { tar czf "$OUT/files.tgz" -C "$KEEP" . ; echo "== $1 at $(( $(date +%s) - T0 )) s"; }
# Runs a part only if its time limit still fits before the deadline.
fits() { [ $(( T0 + ${BUDGET:-540} - $(date +%s) )) -ge "$1" ] || { stamp "skipped: $2"; return 1; }; }

SETS=()  # --set values for every run and profile (DRY: a tiny model)
N=8192
if [ "${DRY:-0}" = 1 ]; then
  SETS=(--set model.n_layer=1 --set model.n_head=2 --set model.d_model=32 --set model.d_ff=64
        --set model.block_size=32 --set train.batch_size=4 --set train.steps=30 --set train.steps_per_call=5
        --set data.eval_windows=8 --set optim.warmup_steps=5)
  N=256
fi

stamp info
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
timeout 60 $PY benchmarks/matmul_rate.py --sizes $N 2>&1 | grep -v Warning

MUON=optim.name=muon,optim.muon_weight_decay=0.2,train.ema=0.98
RECIPES=(
  --recipe "muon1500=$MUON,train.steps=1500"
  --recipe "record1500=$MUON,train.steps=1500,data.order=epoch,model.mtp_depth=1,model.attn_gate=true"
  --recipe "muon1500-bf16ns=$MUON,train.steps=1500,model.products=bfloat16"
  --recipe "muon1500-drop0.1=$MUON,train.steps=1500,model.dropout=0.1"
  --recipe "muon1000=$MUON,train.steps=1000"
)
ablate() {  # time limit, recipe names...
  local limit=$1; shift
  fits "$limit" "time to 1.47: $*" || return
  stamp "time to 1.47: $*"
  timeout "$limit" $PY benchmarks/ablation.py --data "$DATA" --out-dir "$RUNS" --preset gpu --seeds 0 \
    --eval-every 125 --thresholds 1.50 1.47 "${RECIPES[@]}" --recipes "$@" "${SETS[@]}" \
    --json "$KEEP/ablation-$1.json" 2>&1 | grep -v Warning
}
# One call per recipe, so a recipe that fails or hits its limit costs only itself. The
# limits allow for slow compiles (BENCHMARKS.md, "NVIDIA H200" has the preset's time).
ablate 120 preset
ablate 110 muon1500
ablate 120 record1500
ablate 110 muon1500-bf16ns

profile() {  # name, time limit, extra args...
  local name=$1 limit=$2; shift 2
  fits "$limit" "profile $name" || return
  stamp "profile $name"
  timeout "$limit" $PY benchmarks/profile_step.py --preset gpu --calls 4 --top 20 "${SETS[@]}" "$@" \
    --dump "$KEEP/ops-$name.json" 2>&1 | grep -v Warning
}
profile gpu 90
profile gpu-muon 90 --set optim.name=muon
profile gpu-muon-bf16ns 90 --set optim.name=muon --set model.products=bfloat16
if fits 60 "attention forms"; then
  stamp "attention forms"
  ATT=()  # the gpu preset's shape by default: B=64, T=256, 6 heads of 64, bfloat16
  [ "${DRY:-0}" = 1 ] && ATT=(--batch 4 --t 32 --heads 2 --head-dim 16 --reps 3)
  timeout 60 $PY benchmarks/attention_bench.py "${ATT[@]}" 2>&1 | grep -v Warning
fi
ablate 100 muon1000
ablate 110 muon1500-drop0.1

if fits 90 "matmul forms"; then
  stamp "matmul forms"
  timeout 45 $PY benchmarks/matmul_rate.py --sizes $((N / 2)) $((N * 2)) 2>&1 | grep -v Warning
  timeout 45 $PY benchmarks/matmul_rate.py --sizes $N --forms f32out chain ones 2>&1 | grep -v Warning
fi

if fits 60 "memory check"; then
  stamp "memory check: a model too big for the GPU"
  rm -rf "$RUNS/big"
  timeout 60 $PY -m scratchformer train lm --preset gpu --data "$DATA" --out "$RUNS/big" \
    --set model.d_model=8192 --set model.d_ff=32768 --set model.n_head=8 2>&1 | tail -3
  echo "exit ${PIPESTATUS[0]}; run folder: $(ls -d "$RUNS/big" 2>&1)"
fi

if [ "${DRY:-0}" != 1 ] && fits 150 "tests on the GPU"; then
  stamp "tests on the GPU"
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 150 $PY -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tail -40
fi
stamp done
