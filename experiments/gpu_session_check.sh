#!/usr/bin/env bash
# One lent-GPU session's checks for issues #4 and #5, in one command (~6 min on an H100):
#   bash experiments/gpu_session_check.sh OUTDIR
# (a) populations of EBGAN-PT runs (batch 64) against one run alone, both scanned 100 steps a
#     call as the grid runs them, timed round by round (5 rounds, medians): OUTDIR/population.*
# (b) the convolutional configs in bf16 at batch 256 (MFU against 989 TFLOP/s): OUTDIR/conv.*
# (c) the same EBGAN-PT iteration in PyTorch on the same GPU (bf16 autocast, channels_last;
#     eager, then torch.compile), the yardstick for (b)'s MFU: OUTDIR/torch.log
# The lent image has jax, flax, optax and orbax but not ml-collections: put its wheel in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash experiments/gpu_session_check.sh OUTDIR}
mkdir -p "$out"
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
quiet() { grep -v -e '^W[0-9]' -e '^I[0-9]' -e 'UserWarning' ; }
t0=$(date +%s)
python3 -m experiments.benchmark --configs=ebgan_pt --batch_sizes=64 --seconds=2 --rounds=5 \
  --population_sizes=${POP_SIZES:-256,512} --population_steps_per_call=100 \
  --json="$out/population.json" 2>&1 | quiet | tee "$out/population.log"
t1=$(date +%s); echo "(a) $((t1 - t0)) s"
python3 -m experiments.benchmark --dtype=bfloat16 --batch_sizes=256 --chip_peak_tflops=989 \
  --configs=celeba:ebgan_pt,imagenet128:ebgan_pt --seconds=3 --rounds=2 \
  --json="$out/conv.json" 2>&1 | quiet | tee "$out/conv.log"
t2=$(date +%s); echo "(b) $((t2 - t1)) s"
python3 experiments/torch_reference.py --device=cuda --bf16 --channels_last --batch=256 \
  --seconds=3 --rounds=2 --warmup_steps=5 2>&1 | quiet | tee "$out/torch.log"
timeout ${COMPILE_TIMEOUT:-200} python3 experiments/torch_reference.py --device=cuda --bf16 \
  --channels_last --batch=256 --compile --seconds=3 --rounds=2 --warmup_steps=5 2>&1 \
  | quiet | tee -a "$out/torch.log"
t3=$(date +%s); echo "(c) $((t3 - t2)) s; total $((t3 - t0)) s"
