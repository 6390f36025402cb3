"""Padded populations against their members alone: compile seconds, training rate, scores.

  # One bucket of the EBGAN grid (default: nLayerG = nLayerD = 3, sizeG <= 1600, every sizeD,
  # dropout on and off: 24 runs): its padded program against the 24 programs it replaces.
  python -m experiments.padding_benchmark compile [--strategy=vmap] [--steps=20]
  # Tiny runs trained and scored bucketed and unbucketed: do the scores move beyond the
  # seed noise?
  python -m experiments.padding_benchmark scores --workdir=DIR [--steps=500]

`compile` builds each population's programs as the grid does (`grid.compile_population`:
initial state, a scan of `--steps_per_call` steps, the 10,000-sample generator), once per
architecture alone and once per padded population of the bucket (`--max_population` members
a population, sharing one compiled step and generator), and then times `--steps` training
steps of each (after one warm-up call) on the same batches. It prints the compile seconds,
the programs, and the member-steps per second of both.

`scores` trains tiny runs (nLayerG = nLayerD = 3, `--sizes_g` x `--sizes_d` x dropout on and
off; EBGAN under Adam, GAN under Adam and under SGD; `--seeds` seeds each) through
`grid.run_grid` twice, bucketing on and off, with one offline classifier trained for the
pair, and compares each run's I' across the two against the spread of I' over its seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import jax
import numpy as np

from configs import mnist_grid
from ebgan_jax import evaluate, sharding
from ebgan_jax.grid import buckets
from ebgan_jax.grid import programs as programs_lib
from ebgan_jax.grid import runner


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(',')]


def _bucket(args) -> list:
  """The bucket's runs: every sizeG x sizeD x dropout of one depth, one seed each."""
  points = []
  for index, (size_g, size_d, dropout) in enumerate(itertools.product(
      _ints(args.sizes_g), _ints(args.sizes_d), (True, False))):
    config = mnist_grid.get_config('ebgan')
    config.seed = index
    m = config.model
    m.n_layer_g, m.n_layer_d, m.size_g, m.size_d, m.dropout_d = (
        args.n_layer_g, args.n_layer_d, size_g, size_d, dropout)
    config.grid.steps_per_call = args.steps_per_call
    config.grid.population_strategy = args.strategy
    config.grid.max_population = args.max_population
    config.grid.bucket_size_g, config.grid.bucket_size_d = (max(_ints(args.sizes_g)),), (
        max(_ints(args.sizes_d)),)
    points.append(config)
  return points


def _time_training(program, chunks, calls: int) -> float:
  """Seconds for `calls` calls of the program's scanned steps (after one warm-up call)."""
  pop = program.pop
  state = program.init(*pop.init_args)
  new_tracker = programs_lib._new_tracker  # pylint: disable=protected-access
  tracked = new_tracker(pop.size, program.metric_names)
  state, tracked = program.run(state, tracked, chunks, np.int32(0), pop.train_keys)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for call in range(calls):
    state, tracked = program.run(state, tracked, chunks, np.int32(call + 1), pop.train_keys)
  jax.block_until_ready(state)
  return time.perf_counter() - start


def compile_and_rate(args) -> dict:
  points = _bucket(args)
  mesh = sharding.make_mesh()
  settings = evaluate.eval_settings(points[0])
  rng = np.random.default_rng(0)
  chunks = sharding.global_batches(rng.uniform(-1, 1, (args.steps_per_call, 64, 32, 32, 1))
                                   .astype(np.float32), mesh)
  calls = max(1, args.steps // args.steps_per_call)
  out = {'runs': len(points), 'strategy': args.strategy,
         'steps_timed': calls * args.steps_per_call}

  alone_compile, alone_train = 0.0, 0.0
  for config in points:
    config.grid.bucketing = 'off'
    program = programs_lib.compile_population([config], mesh, settings)
    alone_compile += program.compile_s
    alone_train += _time_training(program, chunks, calls)
    print(f'alone {config.model.size_g}x{config.model.size_d} do{int(config.model.dropout_d)}: '
          f'compiled in {program.compile_s:.1f}s', flush=True)
  out.update(alone_programs=len(points), alone_compile_s=round(alone_compile, 1),
             alone_member_steps_per_s=round(len(points) * out['steps_timed'] / alone_train, 2))

  for config in points:
    config.grid.bucketing = 'on'
  groups = buckets.group_points(points, args.max_population, bucketed=True)
  padded = buckets.bucket_programs(points, groups)
  cache = programs_lib.ProgramCache()
  padded_compile, padded_train, init_s = 0.0, 0.0, 0.0
  for group, program_config in zip(groups, padded):
    t0 = time.perf_counter()
    program = programs_lib.compile_population([points[i] for i in group], mesh, settings,
                                              cache, program_config)
    padded_compile += time.perf_counter() - t0
    padded_train += _time_training(program, chunks, calls)
    print(f'padded population of {len(group)} to {program.padded_to}: compiled in '
          f'{program.compile_s:.1f}s (reused: {program.reused})', flush=True)
  waste = buckets.padding_waste(points, args.max_population)
  out.update(padded_programs=len(cache), padded_populations=len(groups),
             padded_compile_s=round(padded_compile, 1),
             padded_member_steps_per_s=round(len(points) * out['steps_timed'] / padded_train, 2),
             flop_waste=round(waste['flop_waste'], 3), byte_waste=round(waste['byte_waste'], 3))
  return out


def _tiny_points(args, bucketing: str) -> list:
  points = []
  # EBGAN under Adam; GAN under Adam and under SGD, which share one program that mixes them.
  settings = [('ebgan', 'adam', 'adam', 1e-3), ('gan', 'adam', 'adam', 1e-3),
              ('gan', 'sgd', 'sgd', 0.05)]
  archs = list(itertools.product(_ints(args.sizes_g), _ints(args.sizes_d), (False, True)))
  for (kind, optim_d, optim_g, lr), (a, (size_g, size_d, dropout)), seed in itertools.product(
      settings, enumerate(archs), range(args.seeds)):
    config = mnist_grid.get_config('smoke')
    config.total_steps, config.batch_size, config.log_every_steps = args.steps, 64, 100
    config.seed = 1000 * a + seed
    m = config.model
    m.n_layer_g, m.n_layer_d, m.size_g, m.size_d, m.dropout_d = 3, 3, size_g, size_d, dropout
    m.latent_dim = 16
    config.loss.kind = kind
    config.optim.optim_d, config.optim.optim_g = optim_d, optim_g
    config.optim.lr_d = config.optim.lr_g = lr
    config.eval.num_samples, config.eval.batch_size = 2000, 500
    config.eval.classifier_epochs, config.eval.classifier_train_examples = 3, 0
    config.grid.variant = 'padding_check'
    config.grid.bucketing = bucketing
    config.grid.bucket_size_g, config.grid.bucket_size_d = (max(_ints(args.sizes_g)),), (
        max(_ints(args.sizes_d)),)
    config.grid.max_population = args.max_population
    config.grid.steps_per_call = 100
    points.append(config)
  return points


def scores(args) -> dict:
  from etils import epath  # pylint: disable=g-import-not-at-top
  workdir = epath.Path(args.workdir)
  rows = {}
  for bucketing in ('on', 'off'):
    points = _tiny_points(args, bucketing)
    summary = runner.run_grid(points, workdir / bucketing, compile_workers=0,
                              classifier_dir=workdir / 'classifier', log=print)
    print(json.dumps(summary))
    from ebgan_jax.grid import table  # pylint: disable=g-import-not-at-top
    rows[bucketing] = {r['run_id']: r for r in table.read_results(workdir / bucketing)}
  on, off = rows['on'], rows['off']
  by_arch = {}
  for run, row in off.items():
    key = (row['loss'], row['optim_d'], row['optim_g'], row['size_g'], row['size_d'],
           row['dropout_d'])
    by_arch.setdefault(key, []).append(run)
  diffs, spreads = [], []
  for key, runs in sorted(by_arch.items()):
    values = [off[r]['i_prime'] for r in runs]
    spread = statistics.stdev(values) if len(values) > 1 else float('nan')
    delta = max(abs(on[r]['i_prime'] - off[r]['i_prime']) for r in runs)
    diffs.append(delta)
    spreads.append(spread)
    print(f'{key}: I\' off {np.round(values, 3).tolist()} on '
          f'{np.round([on[r]["i_prime"] for r in runs], 3).tolist()}: max |on - off| '
          f'{delta:.4f}, seed std {spread:.4f}')
  return dict(runs=len(off), max_abs_delta=float(np.max(diffs)),
              median_abs_delta=float(np.median(diffs)),
              median_seed_std=float(np.nanmedian(spreads)),
              groups_delta_above_seed_std=int(np.sum(np.array(diffs) > np.array(spreads))),
              groups=len(diffs))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('command', choices=('compile', 'scores'))
  parser.add_argument('--n_layer_g', type=int, default=3)
  parser.add_argument('--n_layer_d', type=int, default=3)
  parser.add_argument('--sizes_g', default=None, help='default 400,800,1600 (scores: 32,64)')
  parser.add_argument('--sizes_d', default=None, help='default 128,...,1024 (scores: 16,32)')
  parser.add_argument('--strategy', default='vmap')
  parser.add_argument('--max_population', type=int, default=12)
  parser.add_argument('--steps_per_call', type=int, default=10)
  parser.add_argument('--steps', type=int, default=None, help='compile: 20; scores: 500')
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--workdir', default='')
  args = parser.parse_args()
  if args.command == 'compile':
    args.sizes_g = args.sizes_g or '400,800,1600'
    args.sizes_d = args.sizes_d or '128,256,512,1024'
    args.steps = args.steps or 20
    print(json.dumps(compile_and_rate(args)))
  else:
    args.sizes_g = args.sizes_g or '32,64'
    args.sizes_d = args.sizes_d or '16,32'
    args.steps = args.steps or 500
    print(json.dumps(scores(args)))


if __name__ == '__main__':
  main()
