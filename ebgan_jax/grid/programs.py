"""Compiling, training and generating one population of grid runs.

A population's programs (its initial state, K scanned steps, the sample generator) depend
on the shapes of its members, not on their keys or hyper-parameters, which are inputs. So
populations of one bucket and size (`ebgan_jax.grid.buckets`) share one compiled step and
generator: `compile_population` takes them from a `ProgramCache` when an earlier population
(or another compile thread) built them, and compiles only the new population's initial state.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import math
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebgan_jax import data, padding, population, sharding, step
from ebgan_jax.grid import buckets

# Metrics averaged over the last steps of a run ("final losses").
FINAL_WINDOW = 100


@dataclasses.dataclass
class Program:
  """A population's compiled programs, built before its state exists (on a worker thread).

  `pop.state` holds shapes only; `init(*pop.init_args)` allocates the initial state.
  """
  pop: population.Population
  steps_per_call: int    # K: steps per call of `run` (<= the budget).
  metric_names: tuple[str, ...]
  init: Callable         # (*init_args) -> state
  # (state, tracked, images [K, B, H, W, C], start, train_keys [P]) -> (state, tracked)
  run: Callable
  run_tail: Callable | None  # The same for the last `total_steps % K` steps (None: K divides).
  generate: Callable | None  # (g_params, g_batch_stats, sample_keys) -> images [P, N, H, W, C]
  compile_s: float       # Wall time spent building this (a worker's, overlapping others').
  reused: bool = False   # `run`, `run_tail` and `generate` came from an earlier population.
  padded_to: str = ''    # 'g<sizeG>-d<sizeD>' of a padded population's program, else ''.


class ProgramCache:
  """Compiled programs by what they depend on, shared by the grid's compile threads.

  The first thread to ask for a key builds the value; a thread asking for it meanwhile waits
  for that build instead of compiling it again. A failed build is not kept.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._entries: dict[str, concurrent.futures.Future] = {}

  def get(self, key: str, build: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, whether it was built before this call)."""
    with self._lock:
      future = self._entries.get(key)
      owner = future is None
      if owner:
        future = self._entries[key] = concurrent.futures.Future()
    if not owner:
      return future.result(), True
    try:
      value = build()
    except BaseException as error:
      with self._lock:
        del self._entries[key]
      future.set_exception(error)
      raise
    future.set_result(value)
    return value, False

  def __len__(self) -> int:
    return len(self._entries)


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
  """(state, tracked, images [K, ...], start, train_keys) -> (state, tracked): K steps.

  One call replaces K Python iterations of (host batch, step, tracking): on a GPU a step of
  a small population takes ~0.5 ms, less than the host work around it. Step `start + i`
  trains on `images[i]`; the tracker is the scan's carry, so nothing returns per step. The
  scan carries the population's own carry form (`Population.to_carry`): per-member states
  under the CPU's 'unroll' strategy, split from the stacked state once per call. The
  members' train keys are an input, so that another population of the same shapes can run
  in the same compiled program.
  """
  def run(state, tracked, images, start, train_keys):
    def body(carry, xs):
      members, tracked = carry
      batch, step = xs
      members, metrics = pop.keyed_step(members, batch, train_keys)
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


def program_key(pop: population.Population, strategy: str, steps: int, k: int,
                mesh: jax.sharding.Mesh, eval_settings: ml_collections.ConfigDict | None) -> str:
  """What a population's step and generator programs depend on (`ProgramCache`): the
  program's config but for the member fields, the state's structure and shapes (which also
  tell a mixed-dropout state from another), the strategy, the budget and the devices."""
  shapes = [(leaf.shape, str(leaf.dtype)) for leaf in jax.tree.leaves(pop.state)]
  return json.dumps([population.shared_signature(pop.trainer.config),
                     str(jax.tree.structure(pop.state)), str(shapes), strategy, steps, k,
                     [d.id for d in mesh.devices.flat],
                     eval_settings.to_json(sort_keys=True) if eval_settings else None])


def compile_population(configs: Sequence[ml_collections.ConfigDict],
                       mesh: jax.sharding.Mesh | None = None,
                       eval_settings: ml_collections.ConfigDict | None = None,
                       cache: ProgramCache | None = None,
                       program: ml_collections.ConfigDict | None = None) -> Program:
  """Builds and compiles everything one population runs, allocating none of its state.

  Thread-safe: `run_grid` calls it on a pool of worker threads while the main thread trains.
  XLA's compilation releases the GIL (tracing and lowering in Python do not): on the 2-core
  CPU a pure-Python loop in a second thread kept ~70% of its speed during a compile. A lone
  XLA:CPU compile already keeps ~1.6 cores busy (3.1 s of CPU in 1.9 s), so there two compile
  threads gained nothing over one (see `default_compile_workers`); a 16-core GPU host has
  the cores to spread them over, and the tracing share (~45% here) stays serial.

  Args:
    configs: the members (one signature, or one bucket when `config.grid.bucketing` is on:
      then the population is padded, `ebgan_jax.padding`), all with the same `total_steps`.
    mesh: the device mesh (default: all devices).
    eval_settings: when given (`evaluate.eval_settings`), the sample generator for
      `num_samples` images per member is compiled too.
    cache: where the step and generator programs of earlier populations are kept; a
      population of the same shapes takes them from there (`Program.reused`).
    program: with bucketing, the padded program's config (`buckets.bucket_programs`;
      default: the members' own widest widths).
  """
  t0 = time.perf_counter()
  num_steps = configs[0].total_steps
  if num_steps <= 0:
    raise ValueError('A grid run needs a fixed budget: set config.total_steps > 0.')
  mesh = mesh or sharding.make_mesh()
  padded = buckets.bucketing_on(configs[0])
  strategy = population.resolve_strategy(
      configs[0].get('grid', {}).get('population_strategy', 'auto'))
  program = (program or padding.program_config(configs)) if padded else None
  pop = population.create_population(configs, num_steps, mesh, abstract=True,
                                     strategy=strategy, padded=padded, program=program)
  init = pop.init_fn.lower(*pop.init_args).compile()
  k = min(steps_per_call(configs[0]), num_steps)
  batch = (configs[0].batch_size, *pop.trainer.image_shape)
  _, metrics = jax.eval_shape(pop.step_fn, pop.state, jax.ShapeDtypeStruct(batch, jnp.float32))
  names = tuple(sorted(metrics))

  def build():
    tracker = jax.eval_shape(lambda: _new_tracker(pop.size, names))
    repl = sharding.replicated(mesh)
    run_fn = jax.jit(_scanned_steps(pop, max(num_steps - FINAL_WINDOW, 0)),
                     in_shardings=(repl, repl, sharding.stacked_batch_sharding(mesh), repl,
                                   repl),
                     out_shardings=(repl, repl), donate_argnums=(0, 1))

    def compiled(steps):
      return run_fn.lower(pop.state, tracker,
                          jax.ShapeDtypeStruct((steps, *batch), jnp.float32),
                          jax.ShapeDtypeStruct((), jnp.int32), pop.train_keys).compile()

    run = compiled(k)
    run_tail = compiled(num_steps % k) if num_steps % k else None
    generate = None
    if eval_settings is not None:
      g = pop.state.g
      generate = _generation_fn(pop.trainer, pop.size, eval_settings.num_samples,
                                eval_settings.batch_size).lower(
                                    g.params, g.batch_stats, pop.sample_keys).compile()
    return run, run_tail, generate

  key = program_key(pop, strategy, num_steps, k, mesh, eval_settings)
  cache = ProgramCache() if cache is None else cache  # (An empty cache is falsy.)
  (run, run_tail, generate), reused = cache.get(key, build)
  padded_to = f'g{program.model.size_g}-d{program.model.size_d}' if program else ''
  return Program(pop, k, names, init, run, run_tail, generate, time.perf_counter() - t0,
                 reused, padded_to)


def data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The member config with the grid's data seed: the batches every population shares."""
  data = ml_collections.ConfigDict(config.to_dict())
  data.seed = config.grid.data_seed if 'grid' in config else 0
  return data


def data_key(config: ml_collections.ConfigDict) -> str:
  """What decides a population's batches: the data config's top-level fields."""
  data = data_config(config).to_dict()
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
      batches = data.train_batches(data_config(configs[0]))
    chunks = batch_chunks(batches, mesh, num_steps, program.steps_per_call)
  done = 0
  for images in chunks:
    k = images.shape[0]
    run = program.run if k == program.steps_per_call else program.run_tail
    if run is None or done + k > num_steps:
      raise ValueError(f'A chunk of {k} batches at step {done} does not fit the budget of '
                       f'{num_steps} steps in calls of {program.steps_per_call}.')
    state, tracked = run(state, tracked, images, np.int32(done), pop.train_keys)
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
