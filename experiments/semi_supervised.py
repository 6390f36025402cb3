"""Table 2 (Sec. 4.2, App. D): semi-supervised PI-MNIST, Ladder Network vs EBGAN-LN.

One run (test error on the test split, written to WORKDIR/results.json):
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ebgan_ln --workdir=DIR
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ladder,num_labelled=200 \\
      --workdir=DIR

Table 2's driver: --seeds=S runs seeds 0..S-1 (run seed and labelled-subset seed alike) for
each label count of --num_labelled (default: the config's), in DIR/VARIANT/nN/seedSS, then
writes DIR/table2.md and DIR/table2.json: mean +- std of the test error (%) per label count for
every variant found under DIR, beside the paper's Table 2 rows. Both variants may share DIR:
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ladder --seeds=15 \\
      --num_labelled=100,200,1000 --workdir=DIR
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ebgan_ln --seeds=15 \\
      --num_labelled=100,200,1000 --workdir=DIR
Finished runs (those with results.json) are skipped and an interrupted one resumes from its
checkpoint, so the same command continues a partly done table. --shard=I/N splits the seeds
over N processes, e.g. one per GPU with CUDA_VISIBLE_DEVICES=I.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from ebgan_jax import checkpoint, ssl_train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory (or, with --seeds, the table directory).',
                    required=True)
config_flags.DEFINE_config_file('config', None, 'configs/mnist_ssl.py:VARIANT[,...]',
                                lock_config=True)
flags.DEFINE_integer('seeds', 0, '0: one run in --workdir with the config\'s seeds. S > 0: '
                     'Table 2 driver over seeds 0..S-1 (the paper averages 15).')
flags.DEFINE_list('num_labelled', [], 'Driver mode: label counts (default: the config\'s).')
flags.DEFINE_string('shard', '0/1', 'Driver mode: I/N runs the seeds s with s %% N == I, so N '
                    'processes (one per accelerator) share a table; each rewrites the table from '
                    'the finished runs when it ends.')

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
VARIANT_NAMES = {'ladder': 'Ladder (LN bottom-layer-cost)', 'ebgan_ln': 'EBGAN-LN'}


def run_config(config: ml_collections.ConfigDict, num_labelled: int,
               seed: int) -> ml_collections.ConfigDict:
  """`config` with the label count and both seeds (run, labelled subset) set."""
  config = config.copy_and_resolve_references()
  config.ssl.num_labelled = num_labelled
  config.seed = seed
  config.ssl.labelled_seed = seed
  return config


def run_dir(table_dir: pathlib.Path, variant: str, num_labelled: int, seed: int) -> pathlib.Path:
  return table_dir / variant / f'n{num_labelled}' / f'seed{seed:02d}'


def collect(table_dir: pathlib.Path) -> dict[str, dict[int, list[dict]]]:
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
  return '\n'.join(lines) + '\n'


def drive(config: ml_collections.ConfigDict, table_dir: pathlib.Path, num_seeds: int,
          label_counts: list[int], shard: tuple[int, int] = (0, 1)) -> None:
  """Runs every (label count, seed) not yet finished, then writes table2.md / table2.json.

  `shard` = (i, n) keeps the seeds s with s % n == i (parallel processes share `table_dir`).
  """
  index, count = shard
  for n in label_counts:
    for seed in range(index, num_seeds, count):
      workdir = run_dir(table_dir, config.variant, n, seed)
      if (workdir / ssl_train.RESULTS_FILE).exists():
        logging.info('%s is done; skipping.', workdir)
        continue
      _, results = ssl_train.train_and_evaluate(run_config(config, n, seed), workdir)
      if not results:  # Stopped by a signal: leave the table for the next invocation.
        return
  if jax.process_index() == 0:
    found = collect(table_dir)
    (table_dir / 'table2.md').write_text(table_markdown(found))
    summary = {v: {str(n): {'mean': mean_std([r['test_error_percent'] for r in runs])[0],
                            'std': mean_std([r['test_error_percent'] for r in runs])[1],
                            'seeds': [r['seed'] for r in runs],
                            'errors_percent': [r['test_error_percent'] for r in runs]}
                       for n, runs in per_n.items()} for v, per_n in found.items()}
    (table_dir / 'table2.json').write_text(json.dumps(summary, indent=2, sort_keys=True))
    logging.info('Table 2:\n%s', table_markdown(found))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('Pass --config=configs/mnist_ssl.py:ladder or :ebgan_ln')
  if FLAGS.config.get('experiment') != 'semi_supervised':
    raise app.UsageError('This experiment trains configs/mnist_ssl.py configs; use '
                         'ebgan_jax.main for the GAN configs.')
  checkpoint.quiet_orbax_logs()
  tf.config.set_visible_devices([], 'GPU')  # tf.data only.
  workdir = pathlib.Path(FLAGS.workdir)
  if FLAGS.seeds <= 0:
    _, results = ssl_train.train_and_evaluate(FLAGS.config, workdir)
    if results:
      print(json.dumps(results, indent=2, sort_keys=True))
    return
  counts = [int(n) for n in FLAGS.num_labelled] or [FLAGS.config.ssl.num_labelled]
  index, count = (int(v) for v in FLAGS.shard.split('/'))
  if not 0 <= index < count:
    raise app.UsageError(f'--shard={FLAGS.shard}: expected I/N with 0 <= I < N.')
  drive(FLAGS.config, workdir, FLAGS.seeds, counts, (index, count))


if __name__ == '__main__':
  app.run(main)
