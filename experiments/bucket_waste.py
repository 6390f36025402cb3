"""The padding waste of bucketings of the grids: which widths should share a padded program.

  python -m experiments.bucket_waste [--variants=ebgan,ebgan_pt,gan,gan_slice] [--top=8]

For every contiguous grouping of Table 1's sizeG values (400, 800, 1600, 3200) and sizeD
values (128, 256, 512, 1024), with and without Adam and SGD members in one program (GAN
grids), and for each `--max_populations`, prints the programs, the populations, and the
FLOPs and parameter bytes of the padded members over the unpadded ones
(`ebgan_jax.grid.buckets.padding_waste`), with a model of the GPU wall time, to rank the
bucketings (a model, not a measurement):
- compile work: `--compile_s` (25 s: the H100 trials' 22.8-26.9 s of compile work a program,
  BENCHMARKS.md) per program, spread over `--compile_threads` (8: a 16-core host);
- training: each population takes the larger of its padded parameter bytes per step at
  `--bandwidth` (4.8 TB/s, an H200) x `--efficiency` (0.83, what the H100 populations
  reached), and `--step_ms` (0.7 ms: a population of one on the H100, 1,416 steps/s: the
  launch-bound floor of a small population), times the budget's steps;
- compiles overlap training (they run ahead on threads), so the model is the larger of the
  two. Scoring and setup come on top.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Iterator, Sequence

from configs import mnist_grid
from ebgan_jax import population
from ebgan_jax.grid import buckets


def groupings(values: Sequence[int]) -> Iterator[tuple[int, ...]]:
  """Every split of sorted `values` into contiguous groups, as the groups' largest values."""
  for cuts in itertools.product((False, True), repeat=len(values) - 1):
    yield tuple([v for v, cut in zip(values, cuts) if cut] + [values[-1]])


def _model(row: dict, steps: int, args) -> dict:
  """Adds the modelled compile, training and wall seconds (module docstring)."""
  compile_s = row['programs'] * args.compile_s / args.compile_threads
  train_s = sum(max(b / (args.bandwidth * 1e12 * args.efficiency), args.step_ms * 1e-3)
                for b in row['population_bytes']) * steps
  return dict(row, compile_s=compile_s, train_s=train_s, model_s=max(compile_s, train_s))


def table(variant: str, args) -> tuple[dict, list[dict]]:
  """(bucketing off, the bucketings sorted by the model) for one grid variant."""
  config = mnist_grid.get_config(variant)
  points = mnist_grid.sweep(config)
  steps = config.total_steps
  groups = population.group_configs(points, config.grid.max_population)
  shapes = {population.shared_signature(points[g[0]]) + str(len(g)) for g in groups}
  off = _model(dict(size_g='off', size_d='off', optimizers=False, max_population=16,
                    programs=len(shapes), populations=len(groups), flop_waste=1.0,
                    byte_waste=1.0, population_bytes=[
                        sum(buckets.member_cost(points[i])[1] for i in g) for g in groups]),
               steps, args)
  config.grid.bucketing = 'on'
  rows = []
  for merge in ((True, False) if config.loss.kind == 'gan' else (True,)):
    config.grid.bucket_optimizers = merge
    points = mnist_grid.sweep(config)
    signatures = [buckets.signature(p) for p in points]
    for max_population, edges_g, edges_d in itertools.product(
        args.max_populations, groupings(mnist_grid.SIZE_G), groupings(mnist_grid.SIZE_D)):
      for p in points:
        p.grid.bucket_size_g, p.grid.bucket_size_d = edges_g, edges_d
      waste = buckets.padding_waste(points, max_population, signatures=signatures)
      rows.append(_model(dict(waste, size_g=edges_g, size_d=edges_d, optimizers=merge,
                              max_population=max_population), steps, args))
  return off, sorted(rows, key=lambda r: r['model_s'])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--variants', default='ebgan,ebgan_pt,gan,gan_slice')
  parser.add_argument('--top', type=int, default=8)
  parser.add_argument('--max_populations', default='16,48',
                      help='config.grid.max_population values to try, comma-separated.')
  parser.add_argument('--compile_s', type=float, default=25.0)
  parser.add_argument('--compile_threads', type=int, default=8)
  parser.add_argument('--bandwidth', type=float, default=4.8, help='TB/s')
  parser.add_argument('--efficiency', type=float, default=0.83)
  parser.add_argument('--step_ms', type=float, default=0.7)
  args = parser.parse_args()
  args.max_populations = [int(v) for v in args.max_populations.split(',')]
  print('| grid | sizeG buckets | sizeD buckets | Adam+SGD | max pop. | programs | populations '
        '| FLOP waste | byte waste | compile work / threads | training | model |')
  print('|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for variant in args.variants.split(','):
    config = mnist_grid.get_config(variant)
    off, rows = table(variant, args)
    chosen = [r for r in rows if r['size_g'] == tuple(config.grid.bucket_size_g)
              and r['size_d'] == tuple(config.grid.bucket_size_d)
              and r['optimizers'] == config.grid.bucket_optimizers
              and r['max_population'] == config.grid.max_population]
    for label, row in ([('off', off)] + [('', r) for r in rows[:args.top]]
                       + [('the config', r) for r in chosen]):
      mixed = ('yes' if row['optimizers'] else 'no') if config.loss.kind == 'gan' else '-'
      name = f'{variant} ({label})' if label else variant
      print(f'| {name} | {row["size_g"]} | {row["size_d"]} | {mixed} | '
            f'{row["max_population"]} | {row["programs"]} | {row["populations"]} | '
            f'{row["flop_waste"]:.2f} | {row["byte_waste"]:.2f} | {row["compile_s"]:.0f} s | '
            f'{row["train_s"]:.0f} s | {row["model_s"]:.0f} s |')


if __name__ == '__main__':
  main()
