"""The semi-supervised rows of experiments/benchmark.py (Sec. 4.2, App. D).

`--configs=mnist_ssl:ladder,mnist_ssl:ebgan_ln` times the Ladder's and EBGAN-LN's train step
(labelled and unlabelled batches of `--batch_sizes` each; EBGAN-LN with G on, its costliest
phase) as the loop runs it, `steps_per_call` steps per call, beside the same run's matmul
peak. `--ssl_population_sizes=45` times a population of that many runs of each of
`--ssl_population_variants` (`ebgan_jax.ssl_population`: the program Table 2's driver runs,
members gathering their batches from a device-resident train split), in member-steps/s:
what `experiments/gpu_table2.sh` sizes the full schedule from.
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ebgan_jax import semi_supervised, sharding, ssl_population

NUM_TRAIN = 8_000  # The embedded digits' train split: the device-resident data's shape.


def is_ssl(config: ml_collections.ConfigDict) -> bool:
  return config.get('experiment') == 'semi_supervised'


def _batches(config: ml_collections.ConfigDict, k: int, rng: np.random.Generator):
  b, shape = config.batch_size, (config.image_size, config.image_size, config.channels)
  labelled = (rng.uniform(-1, 1, (k, config.ssl.labelled_batch_size, *shape)),
              rng.integers(0, 10, (k, config.ssl.labelled_batch_size)))
  return ((labelled[0].astype(np.float32), labelled[1].astype(np.int32)),
          rng.uniform(-1, 1, (k, b, *shape)).astype(np.float32))


def step_flops(trainer: semi_supervised.Trainer, config: ml_collections.ConfigDict,
               generator_on: bool) -> float:
  """FLOPs of one step (G on or off), XLA's cost analysis of the step lowered for the CPU."""
  (lab, labels), unl = _batches(config, 1, np.random.default_rng(0))
  key = jax.random.key(0)
  state = jax.eval_shape(trainer.create_state, key)
  spec = lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
  cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])  # The GAN rows' choice.
  step = jax.jit(lambda s, l, u, k: trainer.train_step(s, l, u, k, generator_on=generator_on),
                 in_shardings=cpu)
  cost = step.lower(state, (spec(lab), spec(labels)), spec(unl),
                    jax.ShapeDtypeStruct(key.shape, key.dtype)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def prepare_step(config: ml_collections.ConfigDict, k: int) -> dict:
  """Compiles `k` SSL steps per call (ssl_train's loop), warms them up; a benchmark row."""
  config.ssl.labelled_batch_size = config.batch_size
  mesh = sharding.make_mesh(1)
  trainer = semi_supervised.Trainer(config, 10**6)
  state = jax.jit(trainer.create_state, out_shardings=sharding.replicated(mesh))(
      jax.random.key(0))
  (lab, labels), unl = _batches(config, k, np.random.default_rng(0))
  stacked = sharding.stacked_batch_sharding(mesh)
  args = ((jax.device_put(lab, stacked), jax.device_put(labels, stacked)),
          jax.device_put(unl, stacked), jax.random.key(1))
  t = time.perf_counter()
  compiled = semi_supervised.jit_train_steps(trainer, mesh).lower(state, *args).compile()
  compile_s = time.perf_counter() - t
  flops = step_flops(trainer, config, generator_on=trainer.is_ebgan)
  state, metrics = compiled(state, *args)  # Warm-up (G on: step 0 < generator_off_step).
  jax.block_until_ready(metrics)
  return {'compile_s': compile_s, 'flops_per_step': flops, 'model_flops_per_step': flops,
          'images_per_s': 0.0, '_sync_every': 1, '_fn': compiled, '_state': state,
          '_args': args}


def prepare_population(variant: str, size: int, steps_per_call: int, batch_size: int,
                       strategy: str, matmul_precision: str, generator_on: bool) -> dict:
  """Compiles a population of `size` runs of `variant` (one phase), as the driver runs it."""
  from configs import mnist_ssl  # pylint: disable=g-import-not-at-top
  config = mnist_ssl.get_config(variant)
  config.batch_size = config.ssl.labelled_batch_size = batch_size
  config.matmul_precision = matmul_precision
  trainer = semi_supervised.Trainer(config, 10**6)
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.uniform(-1, 1, (NUM_TRAIN, 28, 28, 1)).astype(np.float32))
  labels = jax.device_put(rng.integers(0, 10, NUM_TRAIN).astype(np.int32))
  keys = [jax.random.split(jax.random.key(seed), 3) for seed in range(size)]
  create = jax.jit(trainer.create_state)
  program = ssl_population.Program(trainer, jnp.stack([k[1] for k in keys]), images, labels,
                                   strategy)
  carry = program.to_carry([create(k[0]) for k in keys])
  idx = [rng.integers(0, NUM_TRAIN, (steps_per_call, size, batch_size)) for _ in range(2)]
  t = time.perf_counter()
  carry, metrics = program(carry, *idx, generator_on)  # Compiles, then the first call.
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  flops = step_flops(trainer, config, generator_on)
  label = f'{variant} (G {"on" if generator_on else "off"})' if trainer.is_ebgan else variant
  return {'variant': label, 'population': size, 'strategy': program.strategy,
          'steps_per_call': steps_per_call, 'batch_size': batch_size,
          'matmul_precision': matmul_precision, 'compile_s': compile_s,
          'flops_per_member_step': flops, 'rounds_member_steps_per_s': [],
          '_program': program, '_carry': carry, '_idx': idx, '_on': generator_on}


def time_population(row: dict, seconds: float) -> float:
  """Times one round of a `prepare_population` row (at least one call): member-steps/s."""
  calls, t = 0, time.perf_counter()
  while True:
    row['_carry'], metrics = row['_program'](row['_carry'], *row['_idx'], row['_on'])
    jax.block_until_ready(metrics)
    calls += 1
    if time.perf_counter() - t >= seconds:
      break
  rate = calls * row['steps_per_call'] * row['population'] / (time.perf_counter() - t)
  row['rounds_member_steps_per_s'].append(rate)
  return rate


def summarize_population(row: dict, peak_gflops: float) -> None:
  rate = float(np.median(row['rounds_member_steps_per_s']))
  row.update(member_steps_per_s=rate, population_steps_per_s=rate / row['population'],
             gflops_per_s=rate * row['flops_per_member_step'] / 1e9)
  row['percent_of_peak'] = 100 * row['gflops_per_s'] / peak_gflops
  for key in [k for k in row if k.startswith('_')]:
    del row[key]


def time_populations(variants: Sequence[str], sizes: Sequence[int], steps_per_call: int,
                     strategy: str, matmul_precision: str, rounds: int, seconds: float,
                     peak_gflops: float) -> list[dict]:
  """The --ssl_population_sizes rows: all compiled first, then timed round by round (so load
  from other processes hits them alike), each reporting its median round; printed as a
  table. EBGAN-LN is timed with G on: after the switch-off its step is the Ladder's."""
  from configs import mnist_ssl  # pylint: disable=g-import-not-at-top
  rows = []
  for variant in variants:
    for size in sizes:
      on = mnist_ssl.get_config(variant).loss.kind == 'ebgan'
      rows.append(prepare_population(variant, size, steps_per_call, 100, strategy,
                                     matmul_precision, on))
      print(f"compiled {rows[-1]['variant']} x{size} ({rows[-1]['strategy']}) in "
            f"{rows[-1]['compile_s']:.1f} s", flush=True)
  if not rows:
    return rows
  for i in range(rounds):
    rates = [time_population(r, seconds) for r in rows]
    print(f'ssl population round {i + 1}: ' + ', '.join(
        f"{r['variant']} x{r['population']}: {x:.0f}" for r, x in zip(rows, rates))
        + f' member-steps/s; load average {os.getloadavg()[0]:.2f}', flush=True)
  print('\n| SSL population | members | strategy | steps/call | member-steps/s | '
        'population steps/s | GFLOP/member-step | GFLOP/s | % of matmul peak | compile s |')
  print('|---|---:|---|---:|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    summarize_population(r, peak_gflops)
    print(f"| {r['variant']} | {r['population']} | {r['strategy']} | {r['steps_per_call']} | "
          f"{r['member_steps_per_s']:.1f} | {r['population_steps_per_s']:.2f} | "
          f"{r['flops_per_member_step'] / 1e9:.3f} | {r['gflops_per_s']:.1f} | "
          f"{r['percent_of_peak']:.0f}% | {r['compile_s']:.1f} |", flush=True)
  return rows
