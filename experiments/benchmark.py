"""Training-step throughput, compile time, XLA FLOPs and memory, beside the matmul peak.

  python -m experiments.benchmark [--configs=gan,ebgan,ebgan_pt] [--batch_sizes=64,256]
      [--steps_per_call=1,10] [--population_sizes=1,16] [--matmul_precision=tensorfloat32]
  python -m experiments.benchmark --configs=celeba:ebgan_pt,lsun_bedroom:ebgan_pt \
      --batch_sizes=64 --lowerings=lax,auto --seconds=10 --min_steps=2 --rounds=2

For each config (the Figure 4 ones of App. C by default), batch size and, for the
convolutional configs, "4c2s" lowering: images/s of the jitted train step (one D and one G
update), its compile time, its FLOPs per iteration from XLA's cost analysis of the lowered
step, the achieved FLOP/s as a percentage of the machine's fp32 matmul rate measured in the
same run, and the peak memory. Synthetic batches: this measures the step, not tf.data. The
steps run as the training loop runs them: `config.steps_per_call` steps per jitted call
(`--steps_per_call=1,10` times both ways).
Prints a Markdown table for BENCHMARKS.md and, with --json, writes the numbers.

`--lowerings` entries set `config.model.transpose_impl` and `conv_impl`
(`ebgan_jax/models/conv_transpose.py`): 'lax' (the plain flax/XLA convolutions) or 'auto'
set both; 'T+C' sets the transposed one to T and the strided one to C (e.g.
'phase+space_to_depth'); any other single name sets the transposed one only. All variants are
compiled first, then timed round by round (`--rounds`), so load from other processes hits
them alike; each row reports its best round. A round times at least `--min_steps` steps and
stops once `--seconds` have passed, so a slow variant costs a few steps, not minutes.

`--population_sizes` adds populations of EBGAN-PT runs (batch 64, members differing in seed)
and their baseline, one run alone, both scanned `--population_steps_per_call` steps a call as
the grid runs them; they too are compiled first and timed round by round, and report their
median round, with each round's ratio against the baseline timed in the same round (on a GPU
one small run is latency-bound and its rate moves between rounds).
"""

from __future__ import annotations

import importlib
import itertools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from ebgan_jax import population, sharding, step
from experiments import machine, population_benchmark, ssl_benchmark

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['gan', 'ebgan', 'ebgan_pt'],
                  'FILE:ARG entries of configs/FILE.py (FILE defaults to mnist_fc), e.g. '
                  'ebgan_pt or celeba:ebgan_pt.')
flags.DEFINE_string('dtype', '', "Compute dtype for the models (config.model.dtype), e.g. "
                    "'bfloat16'; '' keeps the config's.")
flags.DEFINE_enum('matmul_precision', 'default', list(step.MATMUL_PRECISIONS),
                  "config.matmul_precision of the timed steps and populations: 'default' "
                  "keeps JAX's; 'tensorfloat32', 'bfloat16' and 'float32'/'highest' change "
                  'the numerics (ebgan_jax.step.matmul_precision).')
flags.DEFINE_list('batch_sizes', ['64', '256'], 'Global batch sizes.')
flags.DEFINE_float('seconds', 10.0, 'Timed seconds per measurement (after warm-up).')
flags.DEFINE_integer('min_steps', 1, 'Timed steps per measurement at least, whatever '
                     '--seconds says.')
flags.DEFINE_integer('warmup_steps', 3, 'Untimed steps after compiling.')
flags.DEFINE_integer('rounds', 1, 'Timed rounds over all (config, batch, lowering) variants; '
                     'the best round is reported.')
flags.DEFINE_list('lowerings', [], "4c2s lowerings of the convolutional configs, e.g. "
                  "'lax,auto' (see the module docstring); empty: the config's.")
flags.DEFINE_integer('matmul_size', 0, 'Side of the square fp32 matmul for the peak '
                     '(0: 2048 on CPU, 8192 on accelerators).')
flags.DEFINE_list('population_sizes', [], 'Also time populations of these sizes (config '
                  'ebgan_pt, batch 64, members differing in seed), e.g. 1,4,16.')
flags.DEFINE_float('chip_peak_tflops', 0.0, "The chip's nominal peak TFLOP/s for the compute "
                   'dtype (e.g. 989 for H100/H200 dense bf16); adds an MFU column (model '
                   'FLOPs, i.e. those of the plain convolutions, per second / peak).')
flags.DEFINE_enum('population_strategy', 'auto', list(population.STRATEGIES),
                  "How a population program advances its members ('auto': 'unroll' on CPU, "
                  "'vmap' elsewhere; ebgan_jax.population).")
flags.DEFINE_integer('population_steps_per_call', 100, 'Steps per jitted call of a '
                     "population and of its baseline (one lax.scan, as the grid runs them: "
                     "the grid's default `grid.steps_per_call`). On CPU an 'unroll' call splits "
                     'the stacked state into its members and restacks it, a fixed cost per '
                     'call that 10 steps a call do not amortize (BENCHMARKS.md).')
flags.DEFINE_list('steps_per_call', [], 'Train steps per jitted call (one lax.scan, as the '
                  "training loop runs them), e.g. 1,10 to time both; empty: each config's "
                  '`steps_per_call`.')
flags.DEFINE_list('ssl_population_sizes', [], 'Also time populations of these many '
                  'semi-supervised runs (ebgan_jax.ssl_population, as Table 2\'s driver runs '
                  'them, --population_steps_per_call steps a call), e.g. 45.')
flags.DEFINE_list('ssl_population_variants', ['ladder', 'ebgan_ln'], 'configs/mnist_ssl.py '
                  'variants of the --ssl_population_sizes rows (EBGAN-LN: G on and G off).')
flags.DEFINE_string('json', '', 'Write the results to this JSON file.')
flags.DEFINE_list('overrides', [], 'KEY=VALUE config overrides for every timed config and '
                  'population member, e.g. model.size_g=64,model.size_d=48 (small widths for '
                  'the test).')


def step_flops(trainer: step.Trainer, batch_shape: tuple[int, ...]) -> float:
  """FLOPs of one train step from XLA's cost analysis of the step lowered for the CPU.

  The count is the step's arithmetic, whatever runs it. It is taken on the CPU because the
  GPU backend gives no analysis of a lowered module, and its analysis of the compiled one
  misses library calls (it reported fewer FLOPs for a batch of 1024 than for 256).
  """
  cpu_mesh = jax.sharding.Mesh(np.asarray(jax.devices('cpu')[:1]), (sharding.DATA_AXIS,))
  key = jax.random.key(0)
  state = jax.eval_shape(trainer.create_state, key)
  images = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
  lowered = step.jit_train_step(trainer, cpu_mesh).lower(
      state, images, jax.ShapeDtypeStruct(key.shape, key.dtype))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def load_config(entry: str):
  """'FILE:ARG' -> configs/FILE.py's get_config(ARG); a bare 'ARG' means mnist_fc."""
  name, _, arg = entry.rpartition(':') if ':' in entry else ('mnist_fc', '', entry)
  return importlib.import_module(f'configs.{name}').get_config(arg)


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Sets each 'a.b=VALUE' of `overrides` in `config`, VALUE read as the field's type."""
  for entry in overrides:
    key, sep, value = entry.partition('=')
    *parents, leaf = key.split('.')
    node = config
    try:
      for parent in parents:
        node = node[parent]
      old = node[leaf]
    except KeyError as e:
      raise ValueError(f'--overrides: {key!r} is not a config field (entry {entry!r}).') from e
    if not sep:
      raise ValueError(f'--overrides entries are KEY=VALUE, got {entry!r}.')
    if isinstance(old, bool):
      node[leaf] = value.lower() in ('1', 'true', 'yes')
    else:
      node[leaf] = type(old)(value)


def set_lowering(config: ml_collections.ConfigDict, lowering: str) -> None:
  """Sets the "4c2s" lowerings named by a `--lowerings` entry (see the module docstring)."""
  if '+' in lowering:
    config.model.transpose_impl, config.model.conv_impl = lowering.split('+', 1)
  elif lowering in ('lax', 'auto'):
    config.model.transpose_impl = config.model.conv_impl = lowering
  else:
    config.model.transpose_impl = lowering


def synthetic_step_inputs(config: ml_collections.ConfigDict):
  """(mesh, trainer, initial state, a synthetic batch in [-1, 1], train key) for `config`."""
  mesh = sharding.make_mesh()
  trainer = step.Trainer(config, total_steps=10**6)
  state = jax.jit(trainer.create_state, out_shardings=sharding.replicated(mesh))(
      jax.random.key(0))
  images = jax.device_put(
      np.random.default_rng(0).uniform(
          -1, 1, (config.batch_size, config.image_size, config.image_size, config.channels)
      ).astype(np.float32),
      sharding.batch_sharding(mesh))
  return mesh, trainer, state, images, jax.random.key(1)


def prepare_step(variant: str, batch_size: int, lowering: str = '', steps_per_call: int = 0
                 ) -> dict:
  """Compiles the train step of one config at one global batch size and warms it up.

  Returns the result row so far (compile time, FLOPs) with the compiled step and its
  arguments under the private keys that `time_step` uses.
  """
  config = load_config(variant)
  apply_overrides(config, FLAGS.overrides)
  config.batch_size = batch_size
  config.matmul_precision = FLAGS.matmul_precision
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  if lowering:
    set_lowering(config, lowering)
  k = steps_per_call or config.get('steps_per_call', 1)
  if ssl_benchmark.is_ssl(config):  # Labelled and unlabelled batches of `batch_size` each.
    return {'config': variant, 'lowering': '', 'label': variant, 'batch_size': batch_size,
            'steps_per_call': k, 'matmul_precision': FLAGS.matmul_precision,
            **ssl_benchmark.prepare_step(config, k)}
  mesh, trainer, state, images, key = synthetic_step_inputs(config)
  t = time.perf_counter()
  if k == 1:
    compiled = step.jit_train_step(trainer, mesh).lower(state, images, key).compile()
    args = (images, key)
  else:  # As ebgan_jax.train runs them: k steps per call (k batches, here all the same one).
    stacked = jax.device_put(jnp.broadcast_to(images, (k, *images.shape)),
                             sharding.stacked_batch_sharding(mesh))
    compiled = step.jit_train_steps(trainer, mesh).lower(state, stacked, key).compile()
    args = (stacked, key)
  compile_s = time.perf_counter() - t
  flops = step_flops(trainer, images.shape)
  # Model FLOPs for the MFU: those of the plain convolutions. The fast 4c2s lowerings
  # (ebgan_jax/models/conv_transpose.py) may execute more multiply-adds for the same function.
  plain = ml_collections.ConfigDict(config.to_dict())
  plain.model.transpose_impl = plain.model.conv_impl = 'lax'
  model_flops = step_flops(step.Trainer(plain, total_steps=10**6), images.shape)
  t = time.perf_counter()
  for _ in range(max(FLAGS.warmup_steps // k, 1)):
    state, metrics = compiled(state, *args)
  jax.block_until_ready(metrics)
  warmup_step_s = (time.perf_counter() - t) / max(FLAGS.warmup_steps // k, 1) / k
  label = f'{variant} [{lowering}]' if lowering else variant
  return {'config': variant, 'lowering': lowering, 'label': label, 'batch_size': batch_size,
          'steps_per_call': k,
          'matmul_precision': FLAGS.matmul_precision, 'compile_s': compile_s,
          'flops_per_step': flops, 'model_flops_per_step': model_flops,
          'images_per_s': 0.0,
          # Steps of ~10 ms or less are synchronised every 5 steps, slower ones every step.
          '_sync_every': 5 if warmup_step_s < 0.01 else 1,
          '_fn': compiled, '_state': state, '_args': args}


def time_step(row: dict, seconds: float, min_steps: int) -> None:
  """Times one round of `row`'s step; keeps the round's rates if they beat the best so far."""
  compiled, state, args = row['_fn'], row['_state'], row['_args']
  steps, calls, t = 0, 0, time.perf_counter()
  while True:
    state, metrics = compiled(state, *args)
    steps += row['steps_per_call']
    calls += 1
    if row['steps_per_call'] > 1 or calls % row['_sync_every'] == 0:
      jax.block_until_ready(metrics)
      elapsed = time.perf_counter() - t
      if elapsed >= seconds and steps >= min_steps:
        break
  row['_state'] = state  # The input state was donated.
  images_per_s = steps * row['batch_size'] / elapsed
  row.setdefault('rounds_images_per_s', []).append(images_per_s)
  if images_per_s > row['images_per_s']:
    row.update(images_per_s=images_per_s, steps_per_s=steps / elapsed,
               seconds_per_step=elapsed / steps,
               gflops_per_s=row['flops_per_step'] * steps / elapsed / 1e9,
               model_gflops_per_s=row['model_flops_per_step'] * steps / elapsed / 1e9)


def main(argv):
  del argv
  n = FLAGS.matmul_size or (2048 if jax.default_backend() == 'cpu' else 8192)
  peak = machine.matmul_gflops(n)
  bandwidth = machine.memory_gbps()
  host = machine.machine_description()
  print(f'Machine: {host}\nfp32 matmul {n}x{n}x{n}: {peak:.1f} GFLOP/s; memory (streaming '
        f'read + write): {bandwidth:.1f} GB/s; train-step matmul precision: '
        f'{FLAGS.matmul_precision}')
  precision_peak = None
  if FLAGS.matmul_precision not in ('default', 'float32', 'highest'):
    precision_peak = machine.matmul_gflops(n, precision=FLAGS.matmul_precision)
    print(f'fp32 matmul at {FLAGS.matmul_precision} precision: {precision_peak:.1f} GFLOP/s '
          '(the % columns stay against the full-fp32 rate)')
  bf16_peak = None
  if FLAGS.dtype == 'bfloat16':
    bf16_peak = machine.matmul_gflops(n, dtype=jnp.bfloat16)
    print(f'bf16 matmul {n}x{n}x{n}: {bf16_peak:.1f} GFLOP/s (the % column uses this)')
    peak = bf16_peak
  print()
  rows = []
  mfu_head = ' MFU |' if FLAGS.chip_peak_tflops else ''
  for variant in FLAGS.configs:
    for batch_size in map(int, FLAGS.batch_sizes):
      conv = load_config(variant).model.family != 'mlp'  # Lowerings of the 4c2s layers.
      for lowering, k in itertools.product((FLAGS.lowerings if conv else []) or [''],
                                           map(int, FLAGS.steps_per_call or ['0'])):
        rows.append(prepare_step(variant, batch_size, lowering, k))
        print(f"compiled {rows[-1]['label']} batch {batch_size} in "
              f"{rows[-1]['compile_s']:.1f} s", flush=True)
  for i in range(FLAGS.rounds):
    for r in rows:
      time_step(r, FLAGS.seconds, FLAGS.min_steps)
    print(f'round {i + 1}: ' + ', '.join(
        f"{r['label']} b{r['batch_size']} k{r['steps_per_call']} "
        f"{r['rounds_images_per_s'][-1]:.1f}" for r in rows)
        + f' img/s; load average {os.getloadavg()[0]:.2f}', flush=True)
  print('\n| config | batch | steps/call | images/s | s/step | compile s | GFLOP/step | '
        'GFLOP/s | % of matmul peak |' + mfu_head)
  print('|---|---:|---:|---:|---:|---:|---:|---:|---:|' + ('---:|' if mfu_head else ''))
  for r in rows:
    for key in [k for k in r if k.startswith('_')]:
      del r[key]
    r['percent_of_peak'] = 100 * r['gflops_per_s'] / peak
    mfu = ''
    if FLAGS.chip_peak_tflops:
      r['mfu'] = r['model_gflops_per_s'] / (FLAGS.chip_peak_tflops * 1e3)
      mfu = f" {100 * r['mfu']:.0f}% |"
    print(f"| {r['label']} | {r['batch_size']} | {r['steps_per_call']} | "
          f"{r['images_per_s']:.1f} | "
          f"{r['seconds_per_step']:.3f} | {r['compile_s']:.2f} | "
          f"{r['flops_per_step'] / 1e9:.3f} | {r['gflops_per_s']:.1f} | "
          f"{r['percent_of_peak']:.0f}% |{mfu}", flush=True)
  pop_rows = []
  if FLAGS.population_sizes:
    # The sequential baseline, one run's own step scanned as the grid runs a single run, and
    # the populations: all compiled first, then timed round by round (`--rounds`) so that
    # the baseline's jitter (large on a GPU, where one small step is latency-bound) and load
    # from other processes hit them alike; each row reports its median round.
    k = FLAGS.population_steps_per_call

    def configure(config: ml_collections.ConfigDict) -> None:
      apply_overrides(config, FLAGS.overrides)
      config.matmul_precision = FLAGS.matmul_precision

    pop_args = dict(flops_fn=step_flops, configure=configure)
    single = population_benchmark.prepare(1, 64, 'unroll', k, **pop_args)
    single['baseline'] = True
    pop_rows = [single] + [
        population_benchmark.prepare(size, 64, FLAGS.population_strategy, k, **pop_args)
        for size in map(int, FLAGS.population_sizes)]
    for r in pop_rows:
      print(f"compiled population of {r['population']} ({r['strategy']}) in "
            f"{r['compile_s']:.1f} s", flush=True)
    for i in range(FLAGS.rounds):
      rates = [population_benchmark.time_round(r, FLAGS.seconds) for r in pop_rows]
      print(f'population round {i + 1}: ' + ', '.join(
          f"{r['population']}: {rate:.0f}" for r, rate in zip(pop_rows, rates))
          + ' member-img/s', flush=True)
    for r in pop_rows:
      population_benchmark.summarize(r, peak)
    rate = single['member_images_per_s']
    print(f'\nPopulations ({FLAGS.population_strategy}, {k} steps per call, median of '
          f'{FLAGS.rounds} rounds); one run alone, scanned the same way: {rate:.0f} img/s '
          f'({single["percent_of_peak"]:.0f}% of the matmul peak; rounds '
          + ', '.join(f'{x:.0f}' for x in single['rounds_member_images_per_s']) + ')')
    print('\n| population | strategy | batch | member-images/s | steps/s | vs one run alone | '
          'per round vs its own baseline | compile s | % of matmul peak |')
    print('|---:|---|---:|---:|---:|---:|---|---:|---:|')
    for r in pop_rows[1:]:
      r['vs_single_run'] = r['member_images_per_s'] / rate
      r['rounds_vs_single_run'] = [a / b for a, b in zip(
          r['rounds_member_images_per_s'], single['rounds_member_images_per_s'])]
      print(f"| {r['population']} | {r['strategy']} | 64 | {r['member_images_per_s']:.0f} | "
            f"{r['steps_per_s']:.1f} | {r['vs_single_run']:.2f}x | "
            + ', '.join(f'{x:.2f}x' for x in r['rounds_vs_single_run'])
            + f" | {r['compile_s']:.1f} | {r['percent_of_peak']:.0f}% |", flush=True)
  ssl_rows = ssl_benchmark.time_populations(
      FLAGS.ssl_population_variants, list(map(int, FLAGS.ssl_population_sizes)),
      FLAGS.population_steps_per_call, FLAGS.population_strategy, FLAGS.matmul_precision,
      FLAGS.rounds, FLAGS.seconds, peak)
  memory = machine.peak_memory_mib()
  print(f'\nPeak memory: {memory:.0f} MiB')
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump({'machine': host, 'load_average': os.getloadavg(), 'matmul_gflops': peak,
                 'memory_gbps': bandwidth,
                 'matmul_size': n,
                 'dtype': FLAGS.dtype or 'config', 'bf16_matmul_gflops': bf16_peak,
                 'matmul_precision': FLAGS.matmul_precision,
                 'precision_matmul_gflops': precision_peak,
                 'peak_memory_mib': memory, 'results': rows,
                 'populations': pop_rows, 'ssl_populations': ssl_rows,
                 'load_average_end': os.getloadavg(), 'argv': sys.argv}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
