"""The population rows of experiments/benchmark.py (`--population_sizes`, Sec. 4.1's grid).

`prepare` compiles a population of EBGAN-PT runs (members differing in seed, sharing each
batch, as `ebgan_jax.grid` trains them) scanning `steps_per_call` steps a call; `time_round`
times one round of it and `summarize` turns the rounds into the row's rates against the
matmul peak. A population of one under 'unroll' is a single run's own step: the baseline.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from configs import mnist_fc
from ebgan_jax import population


def prepare(size: int, batch_size: int, strategy: str, steps_per_call: int, *,
            flops_fn: Callable[[Any, tuple[int, ...]], float],
            configure: Callable[[ml_collections.ConfigDict], None] = lambda config: None,
            variant: str = 'ebgan_pt') -> dict:
  """Compiles `size` members sharing each batch (ebgan_jax.population), as the grid runs them.

  One call scans `steps_per_call` steps over the population's carry (`Population.to_carry`,
  per-member states under 'unroll'), keeping every step's metrics, as `ebgan_jax.grid` does.
  A population of one under 'unroll' is a single run's own step: the sequential baseline.
  `configure(config)` applies the command's overrides to each member's config;
  `flops_fn(trainer, batch_shape)` counts one member's step (benchmark.step_flops). Returns
  the row `time_round` times (its '_' entries hold the program and state).
  """
  configs = []
  for seed in range(size):
    config = mnist_fc.get_config(variant)
    configure(config)
    config.batch_size, config.seed = batch_size, seed
    configs.append(config)
  pop = population.create_population(configs, total_steps=10**6, strategy=strategy)
  images = np.random.default_rng(0).uniform(-1, 1, (batch_size, 32, 32, 1)).astype(np.float32)
  images = jax.device_put(np.broadcast_to(images, (steps_per_call, *images.shape)).copy())

  def run(state, images):
    carry, metrics = jax.lax.scan(pop.carry_step, pop.to_carry(state), images)
    return pop.from_carry(carry), metrics

  state = pop.state
  t = time.perf_counter()
  compiled = jax.jit(run, donate_argnums=0).lower(state, images).compile()
  compile_s = time.perf_counter() - t
  state, metrics = compiled(state, images)  # Warm-up.
  jax.block_until_ready(metrics)
  return {'population': size, 'strategy': population.resolve_strategy(strategy),
          'config': variant, 'batch_size': batch_size, 'steps_per_call': steps_per_call,
          'matmul_precision': configs[0].matmul_precision, 'compile_s': compile_s,
          'flops_per_step': size * flops_fn(pop.trainer, images.shape[1:]),
          'rounds_member_images_per_s': [],
          '_fn': compiled, '_state': state, '_images': images}


def time_round(row: dict, seconds: float) -> float:
  """Times one round of a `prepare` row; returns its member-images/s."""
  compiled, state, images = row['_fn'], row['_state'], row['_images']
  calls, t = 0, time.perf_counter()
  while True:
    state, metrics = compiled(state, images)
    calls += 1
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t
    if elapsed >= seconds:
      break
  row['_state'] = state  # The input state was donated.
  rate = calls * row['steps_per_call'] * row['batch_size'] * row['population'] / elapsed
  row['rounds_member_images_per_s'].append(rate)
  return rate


def summarize(row: dict, peak: float) -> None:
  """Fills a timed row's rates from the median of its rounds (and keeps the best)."""
  rates = row['rounds_member_images_per_s']
  rate = float(np.median(rates))
  member_steps = rate / row['batch_size']
  row.update(member_images_per_s=rate, best_member_images_per_s=max(rates),
             steps_per_s=member_steps / row['population'],
             gflops_per_s=member_steps / row['population'] * row['flops_per_step'] / 1e9)
  row['percent_of_peak'] = 100 * row['gflops_per_s'] / peak
  for key in [k for k in row if k.startswith('_')]:
    del row[key]
