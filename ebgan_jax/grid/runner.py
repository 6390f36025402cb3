"""`run_grid`: the unfinished runs of one shard, compiled ahead, trained, scored and written."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import socket
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from ebgan_jax import config_checks, data, evaluate, sample, sharding
from ebgan_jax.grid.programs import (Program, ProgramCache, batch_chunks, compile_population,
                                     data_config, data_key, generate_population,
                                     train_population)
from ebgan_jax.grid import buckets
from ebgan_jax.grid.runs import knobs, run_id, shard_populations, table_name
from ebgan_jax.grid.table import (REMOTE_WARNING, SAMPLES_DIR, append_rows, is_remote,
                                  read_results, save_samples, shard_table)


def enable_compilation_cache(directory: str | os.PathLike) -> None:
  """Keeps every compiled program in JAX's persistent cache in `directory`.

  A resumed grid, another shard on the same machine type, or a rerun with other scores loads
  its populations' programs from there instead of compiling them again (on a GPU host each
  EBGAN architecture is a program of several seconds). Every program is kept, however quick
  its compile (JAX's default keeps only those over 1 s). Call before anything is compiled:
  JAX reads the setting when it first uses the cache.
  """
  epath.Path(directory).mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def set_xla_gpu_autotune_level(level: int) -> None:
  """Sets XLA's GEMM/convolution autotuning level on a GPU (`--xla_gpu_autotune_level`).

  0 turns autotuning off, 4 is XLA's default. On the H100 the grid's compile work (22-27 s a
  program) includes the autotuner's trials, which also run on the GPU while populations
  train (BENCHMARKS.md); a lower level compiles faster and may pick slower kernels. XLA
  reads XLA_FLAGS when JAX starts its backends: call this before anything runs on a device.
  """
  if not 0 <= level <= 5:
    raise ValueError(f'xla_gpu_autotune_level must be in 0..5, got {level}.')
  flags = os.environ.get('XLA_FLAGS', '')
  os.environ['XLA_FLAGS'] = f'{flags} --xla_gpu_autotune_level={level}'.strip()


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
                       padded: Sequence[ml_collections.ConfigDict | None],
                       mesh: jax.sharding.Mesh, settings: ml_collections.ConfigDict,
                       workers: int, ahead: int, cache: ProgramCache
                       ) -> Iterator[tuple[Program, float]]:
  """(program, seconds the caller waited for it) for each group, in the groups' order.

  With `workers` > 0 the programs are compiled on a thread pool, at most `ahead` of the one
  the caller holds (queued or done, so compiled-but-untrained programs stay bounded; they hold
  executables, no state). A worker's exception is raised here, by `result()`, in the
  caller's thread. Closing the generator (the caller's loop raised or stopped) cancels what
  has not started and waits for the compiles under way, which end on their own. Populations
  of one bucket and size share their step and generator programs through `cache`; `padded`
  holds each group's padded program config (None: unbucketed).
  """
  if workers <= 0:
    for configs, program_config in zip(groups, padded):
      program = compile_population(configs, mesh, settings, cache, program_config)
      yield program, program.compile_s
    return
  pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='grid-compile')
  pending: collections.deque[concurrent.futures.Future] = collections.deque()
  upcoming = iter(zip(groups, padded))

  def fill():
    while len(pending) < ahead:
      configs, program_config = next(upcoming, (None, None))
      if configs is None:
        return
      pending.append(pool.submit(compile_population, configs, mesh, settings, cache,
                                 program_config))

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
      the shared cache every driver uses (`evaluate.classifier_cache_dir`), so the grid's
      scores and `ebgan_jax.main`'s come from the same classifier.
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
  workdir = epath.Path(workdir)
  points = list(points)
  if not points:
    raise ValueError('The sweep has no points.')
  for config in points:  # Before any work: a bad value fails here, naming its field.
    config_checks.validate(config, driver='grid', process_count=jax.process_count(),
                           device_count=jax.device_count())
  base = points[0]
  variant = base.grid.variant
  if is_remote(workdir):
    logging.warning(REMOTE_WARNING.format(workdir=workdir))
    log('Warning: ' + REMOTE_WARNING.format(workdir=workdir))
  table = shard_table(workdir, table_name(base), num_shards, shard_index)
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

  classifier_dir = classifier_dir or evaluate.classifier_cache_dir(base)
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
  # A bucket's populations share one padded program, made from all of the sweep's runs in
  # the bucket (finished or not, in this shard or another), so it is the same in every shard
  # and after every restart.
  padded = (buckets.bucket_programs(points, selected) if buckets.bucketing_on(base)
            else [None] * len(selected))
  program_cache = ProgramCache()
  programs = _programs_in_order([[points[i] for i in g] for g in selected], padded, mesh,
                                settings, compile_workers, ahead, program_cache)
  try:
    for k, (group, (program, waited)) in enumerate(zip(selected, programs)):
      configs = [points[i] for i in group]
      chunks = None
      if cache_batches:
        key = (data_key(configs[0]), program.steps_per_call)
        if key not in cached:
          t0 = time.perf_counter()
          cached.clear()
          cached[key] = list(batch_chunks(
              data.train_batches(data_config(configs[0])), mesh,
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
          save_samples(workdir / SAMPLES_DIR / f'{ids[group[j]]}.npz',
                        sample.to_uint8(np.asarray(images[j, :base.grid.num_sample_images])))
        finals = {name.replace('final/', 'final_'): float(v[j])
                  for name, v in tracked.items() if name.startswith('final/')}
        rows.append(dict(run_id=ids[group[j]], variant=variant,
                         slice=base.grid.get('slice', 0), **knobs(config), **result,
                         nan=nan, nan_step=int(tracked['nan_step'][j]), **finals,
                         num_samples=settings.num_samples, classifier_test_accuracy=accuracy,
                         population_size=len(configs), padded_to=program.padded_to,
                         program_reused=program.reused, shard=shard_index,
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
      append_rows(table, rows)  # After the samples: a row means a finished run.
      summary['trained'] += len(rows)
      summary['nan'] += sum(int(row['nan']) for row in rows)
      timings.update(compile_s=program.compile_s, compile_wait_s=waited, train_s=train_s,
                     score_s=score_s)
      log(f'[{k + 1}/{len(todo)}] population of {len(configs)} ({ids[group[0]]} ...'
          f'{", padded to " + program.padded_to if program.padded_to else ""}): compiled in '
          f'{program.compile_s:.1f}s{" (reused)" if program.reused else ""} (waited '
          f'{waited:.1f}s), trained in '
          f'{train_s:.1f}s, scored in {score_s:.1f}s; NaN members: '
          f'{int(np.sum(~tracked["finite"]))}')
  finally:
    programs.close()

  wall = time.perf_counter() - start_time
  todo_runs = sum(len(g) for g in todo)
  summary.update({k: round(v, 3) for k, v in sorted(timings.items())})
  summary.update(populations=len(selected), programs=len(program_cache),
                 compile_workers=compile_workers,
                 wall_s=round(wall, 3), runs_per_hour=round(3600 * summary['trained'] / wall, 1))
  message = (f'Trained and scored {summary["trained"]} runs in {len(selected)} populations '
             f'({len(program_cache)} programs) in {wall:.1f}s '
             f'({summary["runs_per_hour"]:.0f} runs/hour): setup '
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
