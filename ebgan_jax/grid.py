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

import collections
import concurrent.futures
import csv
import dataclasses
import fcntl
import itertools
import json
import math
import os
import pathlib
import socket
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebgan_jax import data, evaluate, population, sample, sharding, step

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


# -- compiling, training and scoring one population ----------------------------------------------
@dataclasses.dataclass
class Program:
  """A population's compiled programs, built before its state exists (on a worker thread).

  `pop.state` holds shapes only; `init(*pop.init_args)` allocates the initial state.
  """
  pop: population.Population
  steps_per_call: int    # K: steps per call of `run` (<= the budget).
  metric_names: tuple[str, ...]
  init: Callable         # (*init_args) -> state
  run: Callable          # (state, tracked, images [K, B, H, W, C], start) -> (state, tracked)
  run_tail: Callable | None  # The same for the last `total_steps % K` steps (None: K divides).
  generate: Callable | None  # (g_params, g_batch_stats, sample_keys) -> images [P, N, H, W, C]
  compile_s: float       # Wall time spent building this (a worker's, overlapping others').


def steps_per_call(config: ml_collections.ConfigDict) -> int:
  """K, the steps one jitted call scans over: `config.grid.steps_per_call` (default 100)."""
  k = config.grid.get('steps_per_call', 100) if 'grid' in config else 100
  if k < 1:
    raise ValueError(f'config.grid.steps_per_call must be >= 1, got {k}.')
  return k


def _new_tracker(size: int, metric_names: Sequence[str]) -> dict[str, Any]:
  return {'finite': jnp.ones(size, bool), 'nan_step': jnp.full(size, -1, jnp.int32),
          'sums': {k: jnp.zeros(size, jnp.float32) for k in metric_names}}


def _track(tracked: dict[str, Any], metrics: dict[str, jax.Array], step: jax.Array,
           tail_start: int) -> dict[str, Any]:
  """Folds one step's metrics [P] into the tracker: NaN flags and the tail sums."""
  ok = jnp.isfinite(metrics['d_loss']) & jnp.isfinite(metrics['g_loss'])  # [P]
  nan_step = jnp.where(tracked['finite'] & ~ok, step, tracked['nan_step'])
  in_tail = step >= tail_start
  sums = {k: v + jnp.where(in_tail, metrics[k], 0.0) for k, v in tracked['sums'].items()}
  return {'finite': tracked['finite'] & ok, 'nan_step': nan_step, 'sums': sums}


def _scanned_steps(pop: population.Population, tail_start: int) -> Callable:
  """(state, tracked, images [K, ...], start) -> (state, tracked): K steps in one program.

  One call replaces K Python iterations of (host batch, step, tracking): on a GPU a step of
  a small population takes ~0.5 ms, less than the host work around it. Step `start + i`
  trains on `images[i]`; the tracker is the scan's carry, so nothing returns per step. The
  scan carries the population's own carry form (`Population.to_carry`): per-member states
  under the CPU's 'unroll' strategy, split from the stacked state once per call.
  """
  def run(state, tracked, images, start):
    def body(carry, xs):
      members, tracked = carry
      batch, step = xs
      members, metrics = pop.carry_step(members, batch)
      return (members, _track(tracked, metrics, step, tail_start)), None

    steps = start + jnp.arange(images.shape[0], dtype=jnp.int32)
    (members, tracked), _ = jax.lax.scan(body, (pop.to_carry(state), tracked), (images, steps))
    return pop.from_carry(members), tracked
  return run


def _generation_fn(trainer: step.Trainer, size: int, num: int, batch_size: int) -> Callable:
  """(g_params, g_batch_stats, sample_keys) -> `num` images per member [P, num, H, W, C].

  Chunk i of `batch_size` images draws from `fold_in(sample_key, i)`; `lax.map` runs the
  chunks one after another in one program (bounded memory, one call).
  """
  num_chunks = math.ceil(num / batch_size)

  def generate(g_params, g_batch_stats, sample_keys):
    def chunk(index):
      def one(params, stats, key):
        z_key, noise_key = jax.random.split(jax.random.fold_in(key, index))
        z = trainer.sample_latents(z_key, batch_size)
        return trainer.generate(params, stats, z, noise_key)
      return jax.vmap(one)(g_params, g_batch_stats, sample_keys)  # [P, batch, H, W, C]

    images = jax.lax.map(chunk, jnp.arange(num_chunks, dtype=jnp.int32))  # [C, P, batch, ...]
    images = jnp.moveaxis(images, 0, 1).reshape(size, num_chunks * batch_size,
                                                *images.shape[3:])
    return images[:, :num]
  return jax.jit(generate)


def compile_population(configs: Sequence[ml_collections.ConfigDict],
                       mesh: jax.sharding.Mesh | None = None,
                       eval_settings: ml_collections.ConfigDict | None = None) -> Program:
  """Builds and compiles everything one population runs, allocating none of its state.

  Thread-safe: `run_grid` calls it on a pool of worker threads while the main thread trains.
  XLA's compilation releases the GIL (tracing and lowering in Python do not): on the 2-core
  CPU a pure-Python loop in a second thread kept ~70% of its speed during a compile. A lone
  XLA:CPU compile already keeps ~1.6 cores busy (3.1 s of CPU in 1.9 s), so there two compile
  threads gained nothing over one (see `default_compile_workers`); a 16-core GPU host has
  the cores to spread them over, and the tracing share (~45% here) stays serial.

  Args:
    configs: the members (one signature), all with the same `total_steps`.
    mesh: the device mesh (default: all devices).
    eval_settings: when given (`evaluate.eval_settings`), the sample generator for
      `num_samples` images per member is compiled too.
  """
  t0 = time.perf_counter()
  num_steps = configs[0].total_steps
  if num_steps <= 0:
    raise ValueError('A grid run needs a fixed budget: set config.total_steps > 0.')
  mesh = mesh or sharding.make_mesh()
  pop = population.create_population(configs, num_steps, mesh, abstract=True,
                                     strategy=configs[0].get('grid', {}).get(
                                         'population_strategy', 'auto'))
  init = pop.init_fn.lower(*pop.init_args).compile()
  k = min(steps_per_call(configs[0]), num_steps)
  batch = (configs[0].batch_size, *pop.trainer.image_shape)
  _, metrics = jax.eval_shape(pop.step_fn, pop.state, jax.ShapeDtypeStruct(batch, jnp.float32))
  names = tuple(sorted(metrics))
  tracker = jax.eval_shape(lambda: _new_tracker(pop.size, names))
  repl = sharding.replicated(mesh)
  run_fn = jax.jit(_scanned_steps(pop, max(num_steps - FINAL_WINDOW, 0)),
                   in_shardings=(repl, repl, sharding.stacked_batch_sharding(mesh), repl),
                   out_shardings=(repl, repl), donate_argnums=(0, 1))

  def compiled(steps):
    return run_fn.lower(pop.state, tracker,
                        jax.ShapeDtypeStruct((steps, *batch), jnp.float32),
                        jax.ShapeDtypeStruct((), jnp.int32)).compile()

  run = compiled(k)
  run_tail = compiled(num_steps % k) if num_steps % k else None
  generate = None
  if eval_settings is not None:
    g = pop.state.g
    generate = _generation_fn(pop.trainer, pop.size, eval_settings.num_samples,
                              eval_settings.batch_size).lower(
                                  g.params, g.batch_stats, pop.sample_keys).compile()
  return Program(pop, k, names, init, run, run_tail, generate, time.perf_counter() - t0)


def _data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The member config with the grid's data seed: the batches every population shares."""
  data = ml_collections.ConfigDict(config.to_dict())
  data.seed = config.grid.data_seed if 'grid' in config else 0
  return data


def _data_key(config: ml_collections.ConfigDict) -> str:
  """What decides a population's batches: the data config's top-level fields."""
  data = _data_config(config).to_dict()
  return json.dumps({k: v for k, v in data.items() if not isinstance(v, dict)}, sort_keys=True)


def batch_chunks(batches: Iterable[np.ndarray], mesh: jax.sharding.Mesh, num_steps: int,
                 steps_per_call: int) -> Iterator[jax.Array]:
  """The first `num_steps` host batches, stacked `steps_per_call` at a time, on the devices.

  Yields global arrays [K, B, H, W, C] (B split over 'data'); the last holds the remainder.
  """
  batches = iter(batches)
  for start in range(0, num_steps, steps_per_call):
    k = min(steps_per_call, num_steps - start)
    chunk = list(itertools.islice(batches, k))
    if len(chunk) < k:
      raise ValueError(f'The batches ran out after {start + len(chunk)} of {num_steps} steps.')
    yield sharding.global_batches(np.stack(chunk), mesh)


def train_population(configs: Sequence[ml_collections.ConfigDict],
                     batches: Iterable[np.ndarray] | None = None, *,
                     program: Program | None = None,
                     chunks: Sequence[jax.Array] | None = None,
                     ) -> tuple[population.Population, dict[str, np.ndarray]]:
  """Trains one population for `configs[0].total_steps` steps on shared batches.

  The steps run `steps_per_call(config)` at a time in one jitted `lax.scan` (`Program.run`),
  with the NaN and tail-metric tracking in its carry; the result equals one step per call.

  Args:
    configs: the members (one signature).
    batches: host batches [B, H, W, C] (default: the grid's train batches).
    program: the population's compiled programs (default: compiled here).
    chunks: instead of `batches`, the batches already stacked and on the devices (e.g. from
      `batch_chunks`, kept for every population of a grid).
  Returns:
    The population, and per member [P]: `finite` (no non-finite loss at any step),
    `nan_step` (first bad step, -1 if none) and the final metrics (`final/<name>`: the mean
    over the last `FINAL_WINDOW` steps).
  """
  num_steps = configs[0].total_steps
  mesh = sharding.make_mesh()
  program = program or compile_population(configs, mesh)
  pop = program.pop
  state = program.init(*pop.init_args)
  tracked = _new_tracker(pop.size, program.metric_names)
  if chunks is None:
    if batches is None:
      batches = data.train_batches(_data_config(configs[0]))
    chunks = batch_chunks(batches, mesh, num_steps, program.steps_per_call)
  done = 0
  for images in chunks:
    k = images.shape[0]
    run = program.run if k == program.steps_per_call else program.run_tail
    if run is None or done + k > num_steps:
      raise ValueError(f'A chunk of {k} batches at step {done} does not fit the budget of '
                       f'{num_steps} steps in calls of {program.steps_per_call}.')
    state, tracked = run(state, tracked, images, np.int32(done))
    done += k
  if done != num_steps:
    raise ValueError(f'The batches ran out after {done} of {num_steps} steps.')
  pop = dataclasses.replace(pop, state=state)
  tracked = jax.device_get(tracked)
  out = {'finite': np.asarray(tracked['finite']), 'nan_step': np.asarray(tracked['nan_step'])}
  tail = num_steps - max(num_steps - FINAL_WINDOW, 0)
  for k, v in tracked['sums'].items():
    out[f'final/{k}'] = np.asarray(v) / tail
  return pop, out


def generate_population(pop: population.Population, num: int, batch_size: int = 500,
                        generate: Callable | None = None) -> jax.Array:
  """`num` images per member from its sample key, float32 [P, num, H, W, C], on the device.

  May hold NaN. `generate` is the compiled generator (`Program.generate`) when there is one.
  """
  generate = generate or _generation_fn(pop.trainer, pop.size, num, batch_size)
  return generate(pop.state.g.params, pop.state.g.batch_stats, pop.sample_keys)


def _save_samples(path: pathlib.Path, images: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez_compressed(tmp, images=images)
  tmp.replace(path)


def enable_compilation_cache(directory: str | os.PathLike) -> None:
  """Keeps every compiled program in JAX's persistent cache in `directory`.

  A resumed grid, another shard on the same machine type, or a rerun with other scores loads
  its populations' programs from there instead of compiling them again (on a GPU host each
  EBGAN architecture is a program of several seconds). Every program is kept, however quick
  its compile (JAX's default keeps only those over 1 s). Call before anything is compiled:
  JAX reads the setting when it first uses the cache.
  """
  pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def default_compile_workers() -> int:
  """Threads that compile upcoming populations while one trains: min(8, CPU cores / 2) on an
  accelerator, none when the CPU is the device.

  Compiling ahead pays when the host's cores are idle while the accelerator trains. When
  XLA:CPU trains, it already uses every core (and so does a lone XLA:CPU compile, ~1.6 of
  the 2 cores here): on the shared 2-core CPU, 6-population trials took 49-95 s with no
  compile thread, 91 s with one and 80 s with two, a spread set by other users' jobs, with
  no gain to see (BENCHMARKS.md). On a GPU host half the cores leave the training thread,
  tf.data and XLA's own threads theirs.
  """
  if jax.default_backend() == 'cpu':
    return 0
  return max(1, min(8, (os.cpu_count() or 1) // 2))


def _programs_in_order(groups: Sequence[Sequence[ml_collections.ConfigDict]],
                       mesh: jax.sharding.Mesh, settings: ml_collections.ConfigDict,
                       workers: int, ahead: int) -> Iterator[tuple[Program, float]]:
  """(program, seconds the caller waited for it) for each group, in the groups' order.

  With `workers` > 0 the programs are compiled on a thread pool, at most `ahead` of the one
  the caller holds (queued or done, so compiled-but-untrained programs stay bounded; they hold
  executables, no state). A worker's exception is raised here, by `result()`, in the
  caller's thread. Closing the generator (the caller's loop raised or stopped) cancels what
  has not started and waits for the compiles under way, which end on their own.
  """
  if workers <= 0:
    for configs in groups:
      program = compile_population(configs, mesh, settings)
      yield program, program.compile_s
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='grid-compile')
  pending: collections.deque[concurrent.futures.Future] = collections.deque()
  upcoming = iter(groups)

  def fill():
    while len(pending) < ahead:
      configs = next(upcoming, None)
      if configs is None:
        return
      pending.append(pool.submit(compile_population, configs, mesh, settings))

  try:
    fill()
    while pending:
      t0 = time.perf_counter()
      program = pending.popleft().result()
      waited = time.perf_counter() - t0
      fill()
      yield program, waited
  finally:
    for future in pending:
      future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)


def run_grid(points: Sequence[ml_collections.ConfigDict], workdir: str | os.PathLike, *,
             num_shards: int = 1, shard_index: int = 0,
             classifier_dir: str | os.PathLike | None = None,
             max_populations: int | None = None,
             compile_workers: int | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains and scores the unfinished runs of this shard; appends their rows.

  Each population's programs (initial state, the scanned steps, the sample generator) are
  compiled ahead on `compile_workers` threads while earlier populations train and are
  scored, and the batches, equal for every population, are put on the devices once
  (`config.grid.cache_batches`). Populations are trained, scored and written in the sweep's
  order whatever order their compiles finish in.

  Args:
    points: the grid points (e.g. `configs.mnist_grid.sweep(config)`), all with
      `config.grid` and `config.eval`, one dataset and one budget.
    workdir: the grid's workdir (shared by all shards).
    num_shards, shard_index: which populations this process trains.
    classifier_dir: the cached offline classifier (trained there if missing); default
      `workdir/classifier-<dataset>`.
    max_populations: stop after this many populations (None: all); for tests and trials.
    compile_workers: compile threads; None: `config.grid.compile_workers`, where -1 means
      `default_compile_workers()`; 0 compiles each population in this thread when its turn
      comes (no overlap).
    log: progress printer.
  Returns:
    A summary: runs in the shard, already finished, trained now, NaN runs, table path, and
    the timings of this call: `wall_s`, `setup_s` (classifier, reference statistics,
    batches), the sums over populations of `compile_s` (on the workers), `compile_wait_s`
    (this thread waiting for a compile), `train_s`, `score_s`; `runs_per_hour`, and
    `projected_shard_s`: setup + the measured time per run x the runs left at the start,
    the wall time of the whole shard that a trial (`max_populations`) extrapolates to.
  """
  start_time = time.perf_counter()
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
  # Compile the scoring program now (once per grid), not inside the first population's score_s.
  evaluate.score_images(clf_params, jnp.zeros((settings.num_samples, base.image_size,
                                               base.image_size, base.channels)), reference)
  mesh = sharding.make_mesh()
  if compile_workers is None:
    compile_workers = base.grid.get('compile_workers', -1)
  if compile_workers < 0:
    compile_workers = default_compile_workers()
  ahead = max(2 * compile_workers, 1)
  cache_batches = base.grid.get('cache_batches', True)
  cached: dict[tuple[str, int], list[jax.Array]] = {}  # One grid: one entry.
  timings = collections.Counter()
  timings['setup_s'] = time.perf_counter() - start_time
  log(f'Compiling ahead on {compile_workers} threads (at most {ahead} programs ahead).')

  selected = todo[:max_populations]
  programs = _programs_in_order([[points[i] for i in g] for g in selected], mesh, settings,
                                compile_workers, ahead)
  try:
    for k, (group, (program, waited)) in enumerate(zip(selected, programs)):
      configs = [points[i] for i in group]
      chunks = None
      if cache_batches:
        key = (_data_key(configs[0]), program.steps_per_call)
        if key not in cached:
          t0 = time.perf_counter()
          cached.clear()
          cached[key] = list(batch_chunks(
              data.train_batches(_data_config(configs[0])), mesh,
              configs[0].total_steps, program.steps_per_call))
          timings['setup_s'] += time.perf_counter() - t0
        chunks = cached[key]
      t0 = time.perf_counter()
      pop, tracked = train_population(configs, program=program, chunks=chunks)
      train_s = time.perf_counter() - t0

      t0 = time.perf_counter()
      images = generate_population(pop, settings.num_samples, settings.batch_size,
                                   program.generate)
      finite = np.asarray(jnp.all(jnp.isfinite(images), axis=tuple(range(1, images.ndim))))
      rows = []
      for j, config in enumerate(configs):
        nan = not (bool(tracked['finite'][j]) and bool(finite[j]))
        result = evaluate.score_images(clf_params, images[j], reference)
        if finite[j]:
          _save_samples(workdir / SAMPLES_DIR / f'{ids[group[j]]}.npz',
                        sample.to_uint8(np.asarray(images[j, :base.grid.num_sample_images])))
        finals = {name.replace('final/', 'final_'): float(v[j])
                  for name, v in tracked.items() if name.startswith('final/')}
        rows.append(dict(run_id=ids[group[j]], variant=variant, **knobs(config), **result,
                         nan=nan, nan_step=int(tracked['nan_step'][j]), **finals,
                         num_samples=settings.num_samples, classifier_test_accuracy=accuracy,
                         population_size=len(configs), shard=shard_index,
                         num_shards=num_shards, host=socket.gethostname()))
      del images
      score_s = time.perf_counter() - t0
      total = waited + train_s + score_s
      for row in rows:
        row.update(compile_s=round(program.compile_s, 3), compile_wait_s=round(waited, 3),
                   train_s=round(train_s, 3), score_s=round(score_s, 3),
                   population_train_time_s=round(train_s, 3),
                   population_wall_time_s=round(total, 3),
                   wall_time_s=round(total / len(configs), 3),  # Its share of the program.
                   finished_at=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
        append_row(table, row)
        summary['trained'] += 1
        summary['nan'] += int(row['nan'])
      timings.update(compile_s=program.compile_s, compile_wait_s=waited, train_s=train_s,
                     score_s=score_s)
      log(f'[{k + 1}/{len(todo)}] population of {len(configs)} ({ids[group[0]]} ...): '
          f'compiled in {program.compile_s:.1f}s (waited {waited:.1f}s), trained in '
          f'{train_s:.1f}s, scored in {score_s:.1f}s; NaN members: '
          f'{int(np.sum(~tracked["finite"]))}')
  finally:
    programs.close()

  wall = time.perf_counter() - start_time
  todo_runs = sum(len(g) for g in todo)
  summary.update({k: round(v, 3) for k, v in sorted(timings.items())})
  summary.update(populations=len(selected), compile_workers=compile_workers,
                 wall_s=round(wall, 3), runs_per_hour=round(3600 * summary['trained'] / wall, 1))
  message = (f'Trained and scored {summary["trained"]} runs in {len(selected)} populations in '
             f'{wall:.1f}s ({summary["runs_per_hour"]:.0f} runs/hour): setup '
             f'{timings["setup_s"]:.1f}s, compile {timings["compile_s"]:.1f}s on '
             f'{compile_workers} threads (waited {timings["compile_wait_s"]:.1f}s), train '
             f'{timings["train_s"]:.1f}s, score {timings["score_s"]:.1f}s.')
  if summary['trained']:
    per_run = (wall - timings['setup_s']) / summary['trained']
    summary['projected_shard_s'] = round(timings['setup_s'] + per_run * todo_runs, 1)
    message += (f' All {todo_runs} runs left in this shard would take about '
                f'{summary["projected_shard_s"] / 60:.1f} min at this rate.')
  log(message)
  return summary
