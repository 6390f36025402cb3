"""Run identity (the id and knobs of a grid point) and the shards of a grid."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import ml_collections

from ebgan_jax.grid import buckets


# -- run identity -------------------------------------------------------------------------------
def family(config: ml_collections.ConfigDict) -> str:
  """'gan', 'ebgan' or 'ebgan_pt' (EBGAN with lambda_PT > 0)."""
  if config.loss.kind == 'gan':
    return 'gan'
  return 'ebgan_pt' if config.loss.pt_weight > 0 else 'ebgan'


def run_id(config: ml_collections.ConfigDict) -> str:
  """A readable id naming every knob that tells two runs apart (and the budget)."""
  m, o = config.model, config.optim
  lr = f'{o.lr_d:g}' if o.lr_d == o.lr_g else f'{o.lr_d:g}_{o.lr_g:g}'
  data = pathlib.Path(config.data_dir).name if config.data_dir else config.dataset
  return (f'{family(config)}-g{m.n_layer_g}x{m.size_g}-d{m.n_layer_d}x{m.size_d}'
          f'-do{int(m.dropout_d)}-{o.optim_d}-{o.optim_g}-lr{lr}-m{config.loss.margin:g}'
          f'-pt{config.loss.pt_weight:g}-s{config.seed}-t{config.total_steps}-{data}')


def knobs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Table 1's knobs (and the rest that tells runs apart) as flat row fields."""
  m, o = config.model, config.optim
  return dict(family=family(config), loss=config.loss.kind, n_layer_g=m.n_layer_g,
              n_layer_d=m.n_layer_d, size_g=m.size_g, size_d=m.size_d,
              dropout_d=bool(m.dropout_d), optim_d=o.optim_d, optim_g=o.optim_g,
              lr=o.lr_d, lr_g=o.lr_g, margin=config.loss.margin,
              pt_weight=config.loss.pt_weight, seed=config.seed,
              total_steps=config.total_steps, batch_size=config.batch_size,
              dataset=config.data_dir or config.dataset)


# -- shards -------------------------------------------------------------------------------------
def shard_from_env(num_shards: int | None = None, shard_index: int | None = None,
                   environ: dict[str, str] | None = None) -> tuple[int, int]:
  """(num_shards, shard_index) from the flags, else from the scheduler's environment.

  Slurm job arrays set SLURM_ARRAY_TASK_ID (offset by SLURM_ARRAY_TASK_MIN, so `--array=1-8`
  works too) and SLURM_ARRAY_TASK_COUNT; Kubernetes Indexed Jobs set JOB_COMPLETION_INDEX
  (pass --num_shards = the job's completions).
  """
  env = os.environ if environ is None else environ
  if num_shards is None:
    num_shards = int(env.get('SLURM_ARRAY_TASK_COUNT', 1))
  if shard_index is None:
    if 'SLURM_ARRAY_TASK_ID' in env:
      shard_index = int(env['SLURM_ARRAY_TASK_ID']) - int(env.get('SLURM_ARRAY_TASK_MIN', 0))
    elif 'JOB_COMPLETION_INDEX' in env:
      shard_index = int(env['JOB_COMPLETION_INDEX'])
    else:
      shard_index = 0
  if not 0 <= shard_index < num_shards:
    raise ValueError(f'Shard index {shard_index} is outside [0, {num_shards}); check '
                     '--num_shards/--shard_index or the array range of the job.')
  return num_shards, shard_index


def table_name(config: ml_collections.ConfigDict) -> str:
  """The results table's name: the variant, and `-slice<N>` for a slice of it."""
  size = config.grid.get('slice', 0) if 'grid' in config else 0
  return f'{config.grid.variant}-slice{size}' if size else config.grid.variant


def shard_populations(points: Sequence[ml_collections.ConfigDict], num_shards: int,
                      shard_index: int, max_population: int = 0) -> list[list[int]]:
  """The populations (lists of indices into `points`) that shard `shard_index` trains."""
  groups = buckets.group_points(points, max_population, buckets.bucketing_on(points[0]))
  return [g for k, g in enumerate(groups) if k % num_shards == shard_index]
