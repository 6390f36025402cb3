"""Table 2 (Sec. 4.2, App. D): semi-supervised PI-MNIST, Ladder Network vs EBGAN-LN.

One run (test error on the test split, written to WORKDIR/results.json):
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ebgan_ln --workdir=DIR
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ladder,num_labelled=200 \\
      --workdir=DIR

Table 2's driver: --seeds=S runs seeds 0..S-1 (run seed and labelled-subset seed alike) for
each label count of --num_labelled (default: the config's), in DIR/VARIANT/nN/seedSS, then
writes DIR/table2.md and DIR/table2.json: mean +- std of the test error (%) per label count for
every variant found under DIR, beside the paper's Table 2 rows, and the paired differences by
seed (EBGAN-LN - Ladder, EBGAN-LN - control) with 95% t-intervals. The arms may share DIR:
  for v in ladder control ebgan_ln; do
    python -m experiments.semi_supervised --config=configs/mnist_ssl.py:$v --seeds=15 \\
        --num_labelled=100,200,1000 --population_size=45 --workdir=DIR
  done
--population_size=P trains up to P of an arm's pending runs together as one program
(`ebgan_jax.ssl_population`: vmapped on an accelerator, unrolled on a CPU); 1 trains them one
after another; the default, 0, is all of them on an accelerator and one at a time on a CPU.
Finished runs (those with results.json) are skipped and interrupted ones resume from their
checkpoints, so the same command continues a partly done table; --max_seconds stops it
cleanly (checkpoints saved) after a time budget. --num_shards=N --shard_index=I splits
the seeds over N processes, e.g. one per GPU with CUDA_VISIBLE_DEVICES=I.
"""

from __future__ import annotations

import json

import time

import jax
import ml_collections
import numpy as np
import scipy.stats
from absl import app, flags, logging
from ml_collections import config_flags

from ebgan_jax import checkpoint, paths, ssl_population, ssl_train
from ebgan_jax.grid import runs as grid_runs

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory (or, with --seeds, the table directory).',
                    required=True)
config_flags.DEFINE_config_file('config', None, 'configs/mnist_ssl.py:VARIANT[,...]',
                                lock_config=True)
flags.DEFINE_integer('seeds', 0, '0: one run in --workdir with the config\'s seeds. S > 0: '
                     'Table 2 driver over seeds 0..S-1 (the paper averages 15).')
flags.DEFINE_list('num_labelled', [], 'Driver mode: label counts (default: the config\'s).')
flags.DEFINE_integer('population_size', 0, 'Driver mode: train up to this many pending runs '
                     'of the arm as one program (ebgan_jax.ssl_population); 1: one at a time; '
                     '0: all of them on an accelerator (45 = 15 seeds x 3 label counts), one '
                     'at a time on a CPU (where a population runs at the speed of its runs '
                     'alone, BENCHMARKS.md, and its unrolled program grows with its size).')
flags.DEFINE_enum('population_strategy', 'auto', ['auto', 'vmap', 'unroll'],
                  "How a population program advances its members ('auto': 'unroll' on CPU, "
                  "'vmap' elsewhere).")
flags.DEFINE_float('max_seconds', 0.0, 'Driver mode with populations: save every member and '
                   'stop after this many seconds (0: no limit); the same command resumes.')
flags.DEFINE_integer('num_shards', None, 'Driver mode: N processes (one per accelerator) share '
                     'the table, shard I running the seeds s with s % N == I; each rewrites the '
                     'table from the finished runs when it ends (default: SLURM_ARRAY_TASK_COUNT '
                     'or 1, as experiments.grid_search).')
flags.DEFINE_integer('shard_index', None, 'Driver mode: this shard, I (default: '
                     'SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, else 0).')

# Table 2 of the paper: test error (%) mean +- std over 15 seeds, for 100 / 200 / 1000 labels.
PAPER_TABLE2 = {
    'LN bottom-layer-cost, reported in Pezeshki et al. (2015)':
        {100: (1.69, 0.18), 200: None, 1000: (1.05, 0.02)},
    'LN bottom-layer-cost, reported in Rasmus et al. (2015)':
        {100: (1.09, 0.32), 200: None, 1000: (0.90, 0.05)},
    'LN bottom-layer-cost, reproduced in this work (paper, App. D)':
        {100: (1.36, 0.21), 200: (1.24, 0.09), 1000: (1.04, 0.06)},
    'LN bottom-layer-cost within EBGAN framework (paper)':
        {100: (1.04, 0.12), 200: (0.99, 0.12), 1000: (0.89, 0.04)},
}
LABEL_COUNTS = (100, 200, 1000)
VARIANT_NAMES = {'ladder': 'Ladder (LN bottom-layer-cost)',
                 'control': "control: Ladder at EBGAN-LN's D lr 0.0005",
                 'ebgan_ln': 'EBGAN-LN'}
# Paired differences by seed, (minuend, subtrahend): what the contrastive samples change.
PAIRS = (('ebgan_ln', 'ladder'), ('ebgan_ln', 'control'), ('control', 'ladder'))


def run_config(config: ml_collections.ConfigDict, num_labelled: int,
               seed: int) -> ml_collections.ConfigDict:
  """`config` with the label count and both seeds (run, labelled subset) set."""
  config = config.copy_and_resolve_references()
  config.ssl.num_labelled = num_labelled
  config.seed = seed
  config.ssl.labelled_seed = seed
  return config


def run_dir(table_dir: paths.epath.Path, variant: str, num_labelled: int, seed: int) -> paths.epath.Path:
  return table_dir / variant / f'n{num_labelled}' / f'seed{seed:02d}'


def collect(table_dir: paths.epath.Path) -> dict[str, dict[int, list[dict]]]:
  """{variant: {num_labelled: [results of finished runs]}} under `table_dir`."""
  found: dict[str, dict[int, list[dict]]] = {}
  for path in sorted(table_dir.glob(f'*/n*/seed*/{ssl_train.RESULTS_FILE}')):
    result = json.loads(path.read_text())
    found.setdefault(result['variant'], {}).setdefault(result['num_labelled'], []).append(result)
  return found


def mean_std(errors_percent: list[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single run)."""
  values = np.asarray(errors_percent, np.float64)
  std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
  return float(np.mean(values)), std


def table_markdown(found: dict[str, dict[int, list[dict]]]) -> str:
  """Table 2 in Markdown: the paper's rows, then this code's, one row per variant."""
  counts = sorted({*LABEL_COUNTS, *(n for per_n in found.values() for n in per_n)})

  def cell(value) -> str:
    return '-' if value is None else f'{value[0]:.2f}±{value[1]:.2f}'

  lines = ['| model | ' + ' | '.join(f'{n} labels' for n in counts) + ' |',
           '|---|' + '---|' * len(counts)]
  for name, row in PAPER_TABLE2.items():
    lines.append(f'| {name} | ' + ' | '.join(cell(row.get(n)) for n in counts) + ' |')
  notes = []
  order = list(VARIANT_NAMES)  # The Ladder first, as in the paper.
  for variant, per_n in sorted(found.items(), key=lambda kv: (
      order.index(kv[0]) if kv[0] in order else len(order), kv[0])):
    cells = []
    for n in counts:
      runs = per_n.get(n, [])
      cells.append(f'{cell(mean_std([r["test_error_percent"] for r in runs]))} ({len(runs)})'
                   if runs else '-')
    lines.append(f'| {VARIANT_NAMES.get(variant, variant)}, this code | ' + ' | '.join(cells)
                 + ' |')
    some = next(iter(per_n.values()))[0]
    notes.append(f'{variant}: {some["steps"]} steps on {some["dataset"]} '
                 f'({some["num_test"]} test images), {some["device"]}')
  lines += ['', 'Test error (%), mean ± sample std over seeds (number of seeds in brackets). '
            + '; '.join(notes) + '.']
  differences = paired_differences(found)
  if differences:
    lines += ['', '| paired difference (points of test error) | '
              + ' | '.join(f'{n} labels' for n in counts) + ' |', '|---|' + '---|' * len(counts)]
    for (a, b), per_n in differences.items():
      cells = [(f'{d["mean"]:+.2f} [{d["low"]:+.2f}, {d["high"]:+.2f}] ({d["seeds"]})'
                if (d := per_n.get(n)) else '-') for n in counts]
      lines.append(f'| {VARIANT_NAMES.get(a, a)} − {VARIANT_NAMES.get(b, b)} | '
                   + ' | '.join(cells) + ' |')
    lines += ['', 'Per-seed differences of the same seed and labelled subset, their mean and '
              'a 95% t-interval (mean ± t(0.975, k-1) · sd / sqrt(k) over the k seeds both arms '
              'finished; brackets: k). An interval that excludes 0 is a difference this '
              'many seeds resolve. Paper (15 seeds, unpaired): EBGAN-LN 1.04/0.99/0.89 against '
              'its LN reproduction 1.36/1.24/1.04, i.e. -0.32/-0.25/-0.15.']
  return '\n'.join(lines) + '\n'


def t_interval(values: list[float], confidence: float = 0.95) -> dict[str, float]:
  """Mean and the two-sided t-interval of the mean of `values` (k >= 2)."""
  x = np.asarray(values, np.float64)
  mean, sem = float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(x.size))
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * sem
  return {'mean': mean, 'low': mean - half, 'high': mean + half, 'seeds': int(x.size)}


def paired_differences(found: dict[str, dict[int, list[dict]]]
                       ) -> dict[tuple[str, str], dict[int, dict[str, float]]]:
  """{(a, b): {num_labelled: t_interval of error_a - error_b over their common seeds}}, for
  the `PAIRS` whose arms have at least two common seeds."""
  out = {}
  for a, b in PAIRS:
    per_n = {}
    for n in sorted(set(found.get(a, {})) & set(found.get(b, {}))):
      err_a = {r['seed']: r['test_error_percent'] for r in found[a][n]}
      err_b = {r['seed']: r['test_error_percent'] for r in found[b][n]}
      seeds = sorted(set(err_a) & set(err_b))
      if len(seeds) >= 2:
        per_n[n] = t_interval([err_a[s] - err_b[s] for s in seeds])
    if per_n:
      out[(a, b)] = per_n
  return out


def drive(config: ml_collections.ConfigDict, table_dir: paths.epath.Path, num_seeds: int,
          label_counts: list[int], shard: tuple[int, int] = (0, 1), population_size: int = 1,
          strategy: str = 'auto', max_seconds: float = 0.0) -> None:
  """Runs every (label count, seed) not yet finished, then writes table2.md / table2.json.

  `shard` = (i, n) keeps the seeds s with s % n == i (parallel processes share `table_dir`).
  With `population_size` > 1 the pending runs train in populations of up to that many, those
  that resume from the same step together (`ssl_population.train_population`).
  """
  index, count = shard
  pending = []
  for n in label_counts:
    for seed in range(index, num_seeds, count):
      workdir = run_dir(table_dir, config.variant, n, seed)
      if (workdir / ssl_train.RESULTS_FILE).exists():
        logging.info('%s is done; skipping.', workdir)
        continue
      pending.append((run_config(config, n, seed), workdir))
  if population_size <= 1:
    for run, workdir in pending:
      _, results = ssl_train.train_and_evaluate(run, workdir)
      if not results:  # Stopped by a signal: leave the table for the next invocation.
        return
  elif pending:
    deadline = time.time() + max_seconds if max_seconds > 0 else None
    by_step: dict[int, list] = {}
    for run, workdir in pending:
      by_step.setdefault(ssl_population.resume_step(workdir), []).append((run, workdir))
    splits = ssl_train.load_splits(config)  # Loaded once for every population.
    for step in sorted(by_step, reverse=True):  # The most advanced runs first.
      group = by_step[step]
      for start in range(0, len(group), population_size):
        runs, workdirs = zip(*group[start:start + population_size])
        results = ssl_population.train_population(runs, workdirs, strategy=strategy,
                                                   splits=splits, deadline=deadline)
        for workdir, r in zip(workdirs, results):
          if 'error' in r:
            logging.error('%s did not finish: %s', workdir, r['error'])
        if any(not r for r in results):
          return  # Stopped (signal or time budget): the next invocation resumes.
  if jax.process_index() == 0:
    write_table(table_dir)


def write_table(table_dir: paths.epath.Path) -> None:
  """table2.md and table2.json from every finished run under `table_dir`."""
  found = collect(table_dir)
  (table_dir / 'table2.md').write_text(table_markdown(found))
  summary = {v: {str(n): {'mean': mean_std([r['test_error_percent'] for r in runs])[0],
                          'std': mean_std([r['test_error_percent'] for r in runs])[1],
                          'seeds': [r['seed'] for r in runs],
                          'errors_percent': [r['test_error_percent'] for r in runs]}
                     for n, runs in per_n.items()} for v, per_n in found.items()}
  summary['paired_differences'] = {
      f'{a}-{b}': {str(n): d for n, d in per_n.items()}
      for (a, b), per_n in paired_differences(found).items()}
  (table_dir / 'table2.json').write_text(json.dumps(summary, indent=2, sort_keys=True))
  logging.info('Table 2:\n%s', table_markdown(found))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('Pass --config=configs/mnist_ssl.py:ladder, :control or :ebgan_ln')
  if FLAGS.config.get('experiment') != 'semi_supervised':
    raise app.UsageError('This experiment trains configs/mnist_ssl.py configs; use '
                         'ebgan_jax.main for the GAN configs.')
  checkpoint.quiet_orbax_logs()
  workdir = paths.as_path(FLAGS.workdir)
  if FLAGS.seeds <= 0:
    _, results = ssl_train.train_and_evaluate(FLAGS.config, workdir)
    if results:
      print(json.dumps(results, indent=2, sort_keys=True))
    return
  counts = [int(n) for n in FLAGS.num_labelled] or [FLAGS.config.ssl.num_labelled]
  try:
    count, index = grid_runs.shard_from_env(FLAGS.num_shards, FLAGS.shard_index)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  size = FLAGS.population_size or (1 if jax.default_backend() == 'cpu' else 10**6)
  drive(FLAGS.config, workdir, FLAGS.seeds, counts, (index, count), size,
        FLAGS.population_strategy, FLAGS.max_seconds)


if __name__ == '__main__':
  app.run(main)
