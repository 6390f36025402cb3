"""The MNIST grid search of Sec. 4.1 (Table 1), Figure 9's margin sweep, on one or many machines.

  python -m experiments.grid_search --config=configs/mnist_grid.py:ebgan --workdir=DIR
  python -m experiments.grid_search --config=configs/mnist_grid.py:gan --workdir=DIR \
      --num_shards=64 --shard_index=3          # or SLURM_ARRAY_TASK_ID / JOB_COMPLETION_INDEX
  python -m experiments.grid_search --config=configs/mnist_grid.py:gan --workdir=DIR --merge
  python -m experiments.figures --workdir=DIR  # Figures 2, 3, 4 and 9 from the merged table

Runs sharing parameter shapes train together as one population program (vmapped on a GPU/TPU,
unrolled on a CPU; `grid.population_strategy`); every run is scored
with the offline classifier (trained once into the shared cache, $EBGAN_JAX_CACHE or ~/.cache/ebgan_jax, or --classifier_dir)
and gets one row in DIR/results/<variant>-shard<i>of<n>.jsonl. Run the same command again to
resume: finished runs are skipped. `--merge` writes DIR/results.jsonl and DIR/results.csv
from all shard tables. All the logic is in `ebgan_jax.grid`; see experiments/grid_search.slurm
for a Slurm job array.

Speed: the programs of upcoming populations compile on --compile_workers threads while one
trains; on a GPU/TPU runs that differ only in widths, dropout, optimizers or lr share padded
population programs (`config.grid.bucketing`, `--config.grid.bucketing=off` to turn it off:
the rows are the same); --compilation_cache_dir keeps the programs for a resumed or
re-sharded grid; --xla_gpu_autotune_level trades kernel autotuning for compile time; the last
line printed is a JSON summary with the wall time, runs/hour and the projected time of the
whole shard (from a trial with --max_populations=N). A remote --workdir (gs://...) works;
there each shard must run in exactly one process at a time (the tables have no lock).
"""

from __future__ import annotations

import importlib.util
import json
import logging as std_logging

from absl import app, flags
from ml_collections import config_flags

from ebgan_jax import grid

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Grid config, e.g. configs/mnist_grid.py:ebgan.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'The grid workdir (shared by every shard).', required=True)
flags.DEFINE_integer('num_shards', None, 'Shards of the grid (default: SLURM_ARRAY_TASK_COUNT '
                     'or 1).')
flags.DEFINE_integer('shard_index', None, 'This shard (default: SLURM_ARRAY_TASK_ID - '
                     'SLURM_ARRAY_TASK_MIN, JOB_COMPLETION_INDEX, or 0).')
flags.DEFINE_bool('merge', False, 'Only merge the shard tables into results.jsonl/.csv.')
flags.DEFINE_string('classifier_dir', '', 'Offline classifier directory (default '
                    'the shared cache, $EBGAN_JAX_CACHE or ~/.cache/ebgan_jax; trained there when missing).')
flags.DEFINE_integer('max_populations', None, 'Stop after this many populations (trials: the '
                     'summary projects the whole shard from them).')
flags.DEFINE_integer('compile_workers', None, 'Threads compiling upcoming populations while one '
                     'trains (default: config.grid.compile_workers; -1: min(8, CPU cores / 2) '
                     'on an accelerator, none on a CPU; 0: compile each population when its '
                     'turn comes).')
flags.DEFINE_string('compilation_cache_dir', '', "JAX's persistent compilation cache: a resumed "
                    'or re-sharded grid loads its programs from there instead of compiling '
                    'them again.')
flags.DEFINE_integer('xla_gpu_autotune_level', None, "XLA's GEMM autotuning on a GPU (0: off, "
                     "4: XLA's default); lower compiles faster, the kernels may be slower.")


def load_sweep(config_flag_value: str):
  """The `sweep` function of the config file named by --config (path before ':')."""
  path = config_flag_value.split(':', 1)[0]
  spec = importlib.util.spec_from_file_location('grid_config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.sweep


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.merge:
    path = grid.merge(FLAGS.workdir)
    print(f'Merged {len(grid.read_results(FLAGS.workdir))} runs into {path} and '
          f'{path.with_suffix(".csv")}')
    return
  if FLAGS.config is None:
    raise app.UsageError('Pass --config=configs/mnist_grid.py:VARIANT')
  std_logging.getLogger('absl').setLevel(std_logging.WARNING)
  if FLAGS.xla_gpu_autotune_level is not None:
    grid.set_xla_gpu_autotune_level(FLAGS.xla_gpu_autotune_level)
  if FLAGS.compilation_cache_dir:
    grid.enable_compilation_cache(FLAGS.compilation_cache_dir)
  num_shards, shard_index = grid.shard_from_env(FLAGS.num_shards, FLAGS.shard_index)
  sweep = load_sweep(FLAGS['config'].config_filename)
  points = sweep(FLAGS.config)
  summary = grid.run_grid(points, FLAGS.workdir, num_shards=num_shards,
                          shard_index=shard_index,
                          classifier_dir=FLAGS.classifier_dir or None,
                          max_populations=FLAGS.max_populations,
                          compile_workers=FLAGS.compile_workers)
  print(json.dumps(summary))


if __name__ == '__main__':
  app.run(main)
