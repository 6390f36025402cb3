#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md on one accelerator host. Needs jax (with its CUDA/TPU plugin),
# flax, optax, orbax-checkpoint and ml-collections; not TensorFlow (synthetic batches).
#   bash experiments/gpu_benchmarks.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmark_results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# Figure 4 configs (fp32), and populations of EBGAN-PT runs sharing batches (issue: grid search).
python3 -m experiments.benchmark --configs=gan,ebgan,ebgan_pt --batch_sizes=64,256,1024 \
  --seconds=4 --population_sizes=1,4,16,64,128 --json="$out/fc.json"
# Convolutional configs in bf16 (Sec. 4.3, 4.4).
if [ -f configs/celeba.py ]; then
  python3 -m experiments.benchmark --dtype=bfloat16 --seconds=4 --batch_sizes=64,256 \
    --configs=celeba:ebgan_pt,lsun_bedroom:ebgan_pt,imagenet128:ebgan_pt --json="$out/conv.json"
fi
