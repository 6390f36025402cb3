#!/usr/bin/env bash
# The timings issue #4 (MNIST grid search) asks for, on one GPU host, in one command:
#   bash experiments/gpu_grid_benchmark.sh OUTDIR          # ~5-6 min on one H100, 16 CPU cores
# (a) population throughput, EBGAN-PT at batch 64, populations of 1, 128 and 512 (against the
#     single-run step), once with JAX's default matmul precision and once with TF32:
#     OUTDIR/population_<precision>.{json,log}.
# (b) a trial of the real EBGAN grid (configs/mnist_grid.py:ebgan: 2,000 steps at batch 64 per
#     run, then 10,000 samples scored) for $POPULATIONS populations (one run each), compiled
#     ahead on $WORKERS threads. They are shard 0 of $SPREAD (every $SPREAD-th architecture
#     in Table 1's order), so that all depths and widths are in the sample; the first 48 alone
#     would all have nLayerG = 2. OUTDIR/grid.log ends with the JSON summary (also in
#     OUTDIR/grid_summary.json), and the script prints the 512-run grid's projected time:
#     setup_s + (wall_s - setup_s) / trained x 512. The grid's workdir is OUTDIR/grid: run
#     again with the same OUTDIR and it goes on with the next populations of the shard (the
#     offline classifier is then loaded, not trained).
# Needs jax with CUDA, flax, optax, orbax and ml-collections; no TensorFlow: the grid reads the
# embedded MNIST digits in memory (ebgan_jax.data.arrays). GRID_DATA=FOLDER (MNIST's four IDX
# files, e.g. the full 60,000) or FILE.npz passes --config.data_dir to (b). A classifier already in
# $EBGAN_JAX_CACHE (default ~/.cache/ebgan_jax) is reused (copy one in to skip training it).
# SKIP_GRID=1 runs (a) alone. Environment overrides, e.g. for a try on a CPU:
#   POPULATIONS=2 WORKERS=2 POP_SIZES=1,2 MEASURE_SECONDS=1 MATMUL_SIZE=512 \
#   GRID_ARGS='--config.total_steps=20 --config.eval.num_samples=500' \
#   bash experiments/gpu_grid_benchmark.sh /tmp/out
# Estimate on an H100 (from the H200 session of BENCHMARKS.md): (a) ~70 s per precision (start,
# matmul rates, 1 step + 3 population compiles of 5-10 s, 3 s timed each); (b) ~40 s of setup
# (imports, classifier, reference statistics, batches) + 48 x ~2 s.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash experiments/gpu_grid_benchmark.sh OUTDIR}
python=${PYTHON:-python3}
populations=${POPULATIONS:-48}
workers=${WORKERS:-12}
spread=${SPREAD:-10}
pop_sizes=${POP_SIZES:-1,128,512}
seconds=${MEASURE_SECONDS:-3}
precisions=${PRECISIONS:-default tensorfloat32}
matmul_size=${MATMUL_SIZE:-0}
grid_args=${GRID_ARGS:-}
skip_grid=${SKIP_GRID:-0}
# Fail before any GPU time is spent when a package is missing (the lent 'cuda' image has jax,
# flax, optax and orbax, but not ml-collections, TensorFlow or tensorflow-datasets).
"$python" -c 'import jax, flax, optax, orbax.checkpoint, ml_collections' || {
  echo 'Missing packages for (a): jax, flax, optax, orbax-checkpoint, ml-collections.' >&2; exit 1; }
grid_data=${GRID_DATA:-}
mkdir -p "$out"
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

for precision in $precisions; do
  "$python" -m experiments.benchmark --configs=ebgan_pt --batch_sizes=64 \
    --population_sizes="$pop_sizes" --seconds="$seconds" --matmul_size="$matmul_size" \
    --matmul_precision="$precision" --json="$out/population_$precision.json" \
    2>&1 | grep -v -e '^W[0-9]' -e '^I[0-9]' | tee "$out/population_$precision.log"
done
t1=$(date +%s)
echo "(a) population benchmarks: $((t1 - t0)) s"

if [ "$skip_grid" = 1 ]; then exit 0; fi
# shellcheck disable=SC2086  # GRID_ARGS holds several flags.
"$python" -m experiments.grid_search ${grid_data:+--config.data_dir="$grid_data"} --config=configs/mnist_grid.py:ebgan --workdir="$out/grid" \
  --num_shards="$spread" --shard_index=0 --max_populations="$populations" \
  --compile_workers="$workers" $grid_args 2>&1 | grep -v -e '^W[0-9]' -e '^I[0-9]' \
  | tee "$out/grid.log"
tail -n 1 "$out/grid.log" > "$out/grid_summary.json"
"$python" - "$out/grid_summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
if not s.get('trained'):
  sys.exit('No run was trained (all finished before?): use a new OUTDIR.')
per_run = (s['wall_s'] - s['setup_s']) / s['trained']
print(f"Projected 512-run EBGAN grid: {(s['setup_s'] + 512 * per_run) / 60:.1f} min "
      f"({s['trained']} runs in {s['wall_s']:.0f} s, setup {s['setup_s']:.0f} s, "
      f"{per_run:.2f} s a run; train {s['train_s'] / s['trained']:.2f} s, score "
      f"{s['score_s'] / s['trained']:.2f} s, compile wait {s['compile_wait_s'] / s['trained']:.2f} s "
      f"a run; compile {s['compile_s'] / s['trained']:.1f} s a run on {s['compile_workers']} threads)")
PY
t2=$(date +%s)
echo "(b) grid trial of $populations populations: $((t2 - t1)) s; total $((t2 - t0)) s"
