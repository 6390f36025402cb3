#!/usr/bin/env bash
# One lent-GPU session's checks for issues #4 and #5, in one command (~6 min on an H100):
#   [SECTIONS="population conv torch grid"] bash experiments/gpu_session_check.sh OUTDIR
# population: EBGAN-PT runs (batch 64) in populations against one run alone, both scanned 100
#     steps a call as the grid runs them, timed round by round (5 rounds, medians).
# conv: the convolutional configs in bf16 at batch 256 (MFU against 989 TFLOP/s).
# torch: the same EBGAN-PT iteration in PyTorch on the same GPU (bf16 autocast; eager with
#     channels_last, then torch.compile), the yardstick for conv's MFU.
# grid: a timed trial of the real EBGAN grid (gpu_grid_benchmark.sh's (b): shard 0 of 10, 48
#     runs) on the embedded digits (GRID_DATA=IDX folder or .npz for others) and, when present, the
#     offline classifier in CLASSIFIER_DIR; COMPILATION_CACHE=DIR turns on JAX's persistent
#     cache (and with it XLA's per-fusion autotuning cache, shared by the populations).
# The lent image has jax, flax, optax and orbax but not ml-collections: put its wheel in .whl/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash experiments/gpu_session_check.sh OUTDIR}
sections=${SECTIONS:-population conv torch}
mkdir -p "$out"
if ! python3 -c 'import ml_collections' 2>/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
quiet() { grep -v -e '^W[0-9]' -e '^I[0-9]' -e 'UserWarning' ; }
t0=$(date +%s)
has() { [[ " $sections " == *" $1 "* ]]; }
if has population; then
  python3 -m experiments.benchmark --configs=ebgan_pt --batch_sizes=64 --seconds=2 --rounds=5 \
    --population_sizes=${POP_SIZES:-256,512} --population_steps_per_call=100 \
    --json="$out/population.json" 2>&1 | quiet | tee "$out/population.log"
fi
if has conv; then
  python3 -m experiments.benchmark --dtype=bfloat16 --batch_sizes=256 --chip_peak_tflops=989 \
    --configs=celeba:ebgan_pt,imagenet128:ebgan_pt --seconds=3 --rounds=2 \
    --json="$out/conv.json" 2>&1 | quiet | tee "$out/conv.log"
fi
if has torch; then
  python3 experiments/torch_reference.py --device=cuda --bf16 --channels_last --batch=256 \
    --seconds=3 --rounds=2 --warmup_steps=5 2>&1 | quiet | tee "$out/torch.log"
  # Inductor's channels_last convolution backward failed its stride check (torch 2.11), so
  # the compiled models keep PyTorch's default layout.
  timeout "${COMPILE_TIMEOUT:-200}" python3 experiments/torch_reference.py --device=cuda \
    --bf16 --batch=256 --compile --seconds=3 --rounds=2 --warmup_steps=5 2>&1 \
    | quiet | tee -a "$out/torch.log"
fi
if has grid; then
  mkdir -p "$out/grid"
  python3 -m experiments.grid_search ${GRID_DATA:+--config.data_dir="$GRID_DATA"} \
    --config=configs/mnist_grid.py:ebgan --workdir="$out/grid" --num_shards=10 \
    --shard_index=0 --max_populations="${POPULATIONS:-48}" --compile_workers=12 \
    ${COMPILATION_CACHE:+--compilation_cache_dir="$COMPILATION_CACHE"} \
    ${CLASSIFIER_DIR:+--classifier_dir="$CLASSIFIER_DIR"} 2>&1 \
    | quiet > "$out/grid.log"
  tail -n 1 "$out/grid.log" | tee "$out/grid_summary.json"
  find "$out/grid" -maxdepth 1 -type f -name '*.jsonl' -exec cp {} "$out/" \;
  rm -rf "$out/grid"  # Keep what comes back under the size limits: the log and summary.
fi
echo "total $(( $(date +%s) - t0 )) s"
