"""The grid search runner of Sec. 4.1: populations of runs, scored, one table row per run.

`run_grid(points, workdir, ...)` takes the grid points (configs from a sweep, e.g.
`configs/mnist_grid.py`), groups the runs whose parameter shapes match into populations
(`ebgan_jax.population`: one jitted, vmapped program; members share the input batches),
trains each population for its budget, scores every member with the offline classifier
(`ebgan_jax.evaluate`) and appends one row per run to the results table.

The results table. Each shard appends JSON lines to its own file
`results/<variant>-shard<i>of<n>.jsonl`, one `write` of one whole line per run under an
exclusive `fcntl` lock, followed by `fsync`: two processes on one shared workdir (two shards,
or the same shard started twice) never interleave or truncate each other's rows, and a
process killed mid-write leaves at most one torn last line, which readers skip. A row is
written only after the run's samples are saved, so a row means a finished run.
`merge(workdir)` combines every shard file into `results.jsonl` and `results.csv` (one row per
run id).

Resuming. A restarted grid reads every table in `results/` and skips the runs already there;
populations are formed from the unfinished runs only. A population killed mid-training is
retrained from its first step (runs are short; nothing finished is lost).

Sharding. The populations (not the runs, so that a population's members stay together) are
dealt round-robin to `num_shards` shards in the sweep's order, which every machine computes
alike; `--shard_index` comes from the flag, or `SLURM_ARRAY_TASK_ID` (minus
`SLURM_ARRAY_TASK_MIN`), or Kubernetes' `JOB_COMPLETION_INDEX`.

NaN. A member whose loss or samples become non-finite is recorded with `nan: true`, the step
it first failed at, and NaN scores; the grid goes on. `jax.vmap` keeps members independent:
a NaN in one member's params cannot reach another's (their arithmetic never mixes).
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import pathlib
import socket
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebgan_jax import evaluate, input_pipeline, population, sample, sharding

RESULTS_DIR = 'results'
SAMPLES_DIR = 'samples'
MERGED_JSONL = 'results.jsonl'
MERGED_CSV = 'results.csv'
# Metrics averaged over the last steps of a run ("final losses").
FINAL_WINDOW = 100


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


def shard_populations(points: Sequence[ml_collections.ConfigDict], num_shards: int,
                      shard_index: int, max_population: int = 0) -> list[list[int]]:
  """The populations (lists of indices into `points`) that shard `shard_index` trains."""
  groups = population.group_configs(points, max_population)
  return [g for k, g in enumerate(groups) if k % num_shards == shard_index]


# -- the results table ----------------------------------------------------------------------------
def shard_table(workdir: str | os.PathLike, variant: str, num_shards: int,
                shard_index: int) -> pathlib.Path:
  return (pathlib.Path(workdir) / RESULTS_DIR /
          f'{variant}-shard{shard_index:04d}of{num_shards:04d}.jsonl')


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
  """Appends `row` as one JSON line: one write under an exclusive lock, then fsync."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  line = (json.dumps(row, sort_keys=True, allow_nan=True) + '\n').encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      # A torn last line (a writer killed mid-line) would glue onto this row: start afresh.
      size = os.fstat(fd).st_size
      if size:
        with open(path, 'rb') as f:
          f.seek(size - 1)
          if f.read(1) != b'\n':
            line = b'\n' + line
      written = 0
      while written < len(line):
        written += os.write(fd, line[written:])
      os.fsync(fd)
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of one JSONL table; unparsable (torn) lines are skipped with a warning."""
  rows = []
  path = pathlib.Path(path)
  if not path.exists():
    return rows
  with open(path, 'rb') as f:
    fcntl.flock(f, fcntl.LOCK_SH)
    data = f.read()
    fcntl.flock(f, fcntl.LOCK_UN)
  for number, line in enumerate(data.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      logging.warning('Skipping the unreadable line %d of %s (a write cut short).', number, path)
  return rows


def read_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every row of every shard table in `workdir/results`, one per run id (the first written)."""
  rows: dict[str, dict[str, Any]] = {}
  for path in sorted((pathlib.Path(workdir) / RESULTS_DIR).glob('*.jsonl')):
    for row in read_table(path):
      rows.setdefault(row['run_id'], row)
  return list(rows.values())


def merge(workdir: str | os.PathLike) -> pathlib.Path:
  """Combines the shard tables into `workdir/results.jsonl` and `results.csv` (atomically)."""
  workdir = pathlib.Path(workdir)
  rows = sorted(read_results(workdir), key=lambda r: r['run_id'])
  tmp = workdir / (MERGED_JSONL + '.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + '\n')
  tmp.replace(workdir / MERGED_JSONL)
  columns = sorted({k for row in rows for k in row})
  tmp = workdir / (MERGED_CSV + '.tmp')
  with open(tmp, 'w', encoding='utf-8', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                       for k, v in row.items()})
  tmp.replace(workdir / MERGED_CSV)
  return workdir / MERGED_JSONL


# -- training and scoring one population ----------------------------------------------------------
def _data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The member config with the grid's data seed: the batches every population shares."""
  data = ml_collections.ConfigDict(config.to_dict())
  data.seed = config.grid.data_seed if 'grid' in config else 0
  return data


def train_population(configs: Sequence[ml_collections.ConfigDict],
                     batches: Iterable[np.ndarray] | None = None
                     ) -> tuple[population.Population, dict[str, np.ndarray]]:
  """Trains one population for `configs[0].total_steps` steps on shared batches.

  Returns:
    The population, and per member [P]: `finite` (no non-finite loss at any step),
    `nan_step` (first bad step, -1 if none) and the final metrics (`final/<name>`: the mean
    over the last `FINAL_WINDOW` steps).
  """
  num_steps = configs[0].total_steps
  if num_steps <= 0:
    raise ValueError('A grid run needs a fixed budget: set config.total_steps > 0.')
  mesh = sharding.make_mesh()
  pop = population.create_population(configs, num_steps, mesh)
  if batches is None:
    batches = input_pipeline.train_batches(_data_config(configs[0]))
  batches = iter(batches)
  tail_start = max(num_steps - FINAL_WINDOW, 0)

  @jax.jit
  def track(tracked, metrics, step):
    ok = jnp.isfinite(metrics['d_loss']) & jnp.isfinite(metrics['g_loss'])  # [P]
    nan_step = jnp.where(tracked['finite'] & ~ok, step, tracked['nan_step'])
    in_tail = step >= tail_start
    sums = {k: v + jnp.where(in_tail, metrics[k], 0.0) for k, v in tracked['sums'].items()}
    return {'finite': tracked['finite'] & ok, 'nan_step': nan_step, 'sums': sums}

  tracked = None
  for s in range(num_steps):
    images = sharding.global_batch(next(batches), mesh)
    pop.state, metrics = pop.train_step(pop.state, images)
    if tracked is None:
      tracked = {'finite': jnp.ones(pop.size, bool), 'nan_step': jnp.full(pop.size, -1),
                 'sums': {k: jnp.zeros(pop.size, jnp.float32) for k in metrics}}
    tracked = track(tracked, metrics, s)
  tracked = jax.device_get(tracked)
  out = {'finite': np.asarray(tracked['finite']), 'nan_step': np.asarray(tracked['nan_step'])}
  for k, v in tracked['sums'].items():
    out[f'final/{k}'] = np.asarray(v) / (num_steps - tail_start)
  return pop, out


def generate_population(pop: population.Population, num: int, batch_size: int = 500
                        ) -> np.ndarray:
  """`num` images per member from its sample key, float32 [P, num, H, W, C] (may hold NaN)."""
  trainer = pop.trainer

  @jax.jit
  def chunk(g_params, g_stats, sample_keys, index):
    def one(params, stats, key):
      z_key, noise_key = jax.random.split(jax.random.fold_in(key, index))
      z = trainer.sample_latents(z_key, batch_size)
      return trainer.generate(params, stats, z, noise_key)
    return jax.vmap(one)(g_params, g_stats, sample_keys)

  out = []
  for i in range(math.ceil(num / batch_size)):
    out.append(np.asarray(chunk(pop.state.g.params, pop.state.g.batch_stats, pop.sample_keys,
                                i)))
  return np.concatenate(out, axis=1)[:, :num]


def _save_samples(path: pathlib.Path, images: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez_compressed(tmp, images=images)
  tmp.replace(path)


def run_grid(points: Sequence[ml_collections.ConfigDict], workdir: str | os.PathLike, *,
             num_shards: int = 1, shard_index: int = 0,
             classifier_dir: str | os.PathLike | None = None,
             max_populations: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains and scores the unfinished runs of this shard; appends their rows.

  Args:
    points: the grid points (e.g. `configs.mnist_grid.sweep(config)`), all with
      `config.grid` and `config.eval`, one dataset and one budget.
    workdir: the grid's workdir (shared by all shards).
    num_shards, shard_index: which populations this process trains.
    classifier_dir: the cached offline classifier (trained there if missing); default
      `workdir/classifier-<dataset>`.
    max_populations: stop after this many populations (None: all); for tests and trials.
    log: progress printer.
  Returns:
    A summary: runs in the shard, already finished, trained now, NaN runs, table path.
  """
  workdir = pathlib.Path(workdir)
  points = list(points)
  if not points:
    raise ValueError('The sweep has no points.')
  base = points[0]
  variant = base.grid.variant
  table = shard_table(workdir, variant, num_shards, shard_index)
  ids = [run_id(c) for c in points]
  if len(set(ids)) != len(ids):
    raise ValueError('The sweep has repeated points (equal run ids).')
  done = {r['run_id'] for r in read_results(workdir)}
  groups = shard_populations(points, num_shards, shard_index, base.grid.max_population)
  todo = [[i for i in g if ids[i] not in done] for g in groups]
  todo = [g for g in todo if g]
  in_shard = sum(len(g) for g in groups)
  log(f'Shard {shard_index}/{num_shards} of {variant}: {in_shard} runs in '
      f'{len(groups)} populations, {in_shard - sum(len(g) for g in todo)} already finished; '
      f'table {table}')
  summary = dict(shard_runs=in_shard, finished_before=in_shard - sum(len(g) for g in todo),
                 trained=0, nan=0, table=str(table))
  if not todo:
    return summary

  classifier_dir = classifier_dir or evaluate.default_classifier_dir(base, workdir)
  clf_params, clf_meta = evaluate.get_classifier(base, classifier_dir)
  accuracy = float(clf_meta.get('test_accuracy', float('nan')))
  log(f'Offline classifier {classifier_dir}: test accuracy {accuracy:.4f}')
  reference = evaluate.reference_statistics(clf_params, base)
  settings = evaluate.eval_settings(base)

  for k, group in enumerate(todo[:max_populations]):
    configs = [points[i] for i in group]
    t0 = time.time()
    pop, tracked = train_population(configs)
    train_seconds = time.time() - t0
    images = generate_population(pop, settings.num_samples, settings.batch_size)
    rows = []
    for j, config in enumerate(configs):
      finite_images = bool(np.all(np.isfinite(images[j])))
      nan = not (bool(tracked['finite'][j]) and finite_images)
      result = evaluate.score_images(clf_params, images[j], reference)
      if finite_images:
        _save_samples(workdir / SAMPLES_DIR / f'{ids[group[j]]}.npz',
                      sample.to_uint8(images[j][:base.grid.num_sample_images]))
      finals = {name.replace('final/', 'final_'): float(v[j])
                for name, v in tracked.items() if name.startswith('final/')}
      rows.append(dict(run_id=ids[group[j]], variant=variant, **knobs(config), **result,
                       nan=nan, nan_step=int(tracked['nan_step'][j]), **finals,
                       num_samples=settings.num_samples, classifier_test_accuracy=accuracy,
                       population_size=len(configs), shard=shard_index,
                       num_shards=num_shards, host=socket.gethostname()))
    total = time.time() - t0
    for row in rows:
      row.update(population_train_time_s=round(train_seconds, 3),
                 population_wall_time_s=round(total, 3),
                 wall_time_s=round(total / len(configs), 3),  # Its share of the program.
                 finished_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
      append_row(table, row)
      summary['trained'] += 1
      summary['nan'] += int(row['nan'])
    log(f'[{k + 1}/{len(todo)}] population of {len(configs)} ({ids[group[0]]} ...) trained '
        f'in {train_seconds:.1f}s; NaN members: {int(np.sum(~tracked["finite"]))}')
  return summary
