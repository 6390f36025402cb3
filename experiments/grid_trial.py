"""A timed trial of the grid runner on a host without TensorFlow, from exported data.

  # Where TensorFlow is installed: the grid's batches and splits, as uint8 arrays.
  python -m experiments.grid_trial export --config=configs/mnist_grid.py:ebgan --out=DATA.npz
  # On the accelerator host (jax, flax, optax, orbax, ml-collections; no TensorFlow):
  python -m experiments.grid_trial run --config=configs/mnist_grid.py:ebgan --data=DATA.npz \
      --workdir=DIR --num_shards=10 --shard_index=0 --max_populations=48 --compile_workers=12

The grid reads its data through tf.data (`ebgan_jax.input_pipeline`); accelerator images
that lack TensorFlow (as the GPU machines BENCHMARKS.md was measured on) cannot run it. `export`
writes what the grid would read -- the shared train batches of one budget, and the train
and test splits (the offline classifier and the FID reference) -- as uint8 pixels, which
`x / 127.5 - 1` maps back to the pipeline's float32 values exactly. `run` stands stubs in for
the TensorFlow modules, serves those arrays in place of `train_batches`/`split_arrays`, and
runs `ebgan_jax.grid.run_grid` unchanged: the same programs, the same batches, the same
scores, so its summary (`wall_s`, `setup_s`, per-run train/score/compile-wait seconds) times
the real grid. Use it for timing only; a real grid should run `experiments.grid_search`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types


def _load_sweep(config_arg: str):
  """(sweep points, base config) of a `path.py:ARG` grid config."""
  path, _, arg = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('grid_config_module', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  return module.sweep(config), config


def _to_uint8(images):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.round((np.asarray(images) + 1.0) * 127.5).astype(np.uint8)


def export_arrays(points, out: str) -> dict:
  """Writes the data the grid of `points` reads (see the module docstring) to `out` (.npz)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ebgan_jax import grid, input_pipeline  # pylint: disable=g-import-not-at-top
  data_config = grid.data_config(points[0])
  batches = input_pipeline.train_batches(data_config)
  train = [_to_uint8(next(batches)) for _ in range(points[0].total_steps)]
  arrays = {'train_batches': np.stack(train)}
  for split in ('train', 'test'):
    images, labels = input_pipeline.split_arrays(points[0], split)
    arrays[f'{split}_images'], arrays[f'{split}_labels'] = _to_uint8(images), labels
  np.savez_compressed(out, **arrays)
  return arrays


def export(args) -> None:
  points, _ = _load_sweep(args.config)
  arrays = export_arrays(points, args.out)
  print(f'Wrote {args.out}: ' + ', '.join(f'{k} {v.shape}' for k, v in arrays.items()))


class _StubBase:
  """The base class a stubbed class (e.g. a tfds builder) gets; takes any class keywords."""

  def __init_subclass__(cls, **kwargs):
    del kwargs


class _Stub(types.ModuleType):
  """A module whose every attribute is a harmless stand-in (class bases, decorators, values)."""

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _Stub(f'{self.__name__}.{name}')

  def __call__(self, *args, **kwargs):
    return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self

  def __mro_entries__(self, bases):
    return (_StubBase,)


def _import_grid_without_tensorflow(force: bool = False) -> types.ModuleType:
  """`ebgan_jax.grid`, imported with stubs for the TensorFlow modules that are missing.

  The stubs leave `sys.modules` once the imports are done, so that libraries which probe
  for TensorFlow later (etils, under orbax) find it absent rather than a stub.
  """
  stubbed = []
  for name in ('tensorflow', 'tensorflow_datasets'):
    try:
      if force:
        raise ImportError(name)
      __import__(name)
    except ImportError:
      sys.modules[name] = _Stub(name)
      stubbed.append(name)
  from ebgan_jax import grid  # pylint: disable=g-import-not-at-top
  for name in stubbed:
    del sys.modules[name]
  return grid


def run(args) -> None:
  grid = _import_grid_without_tensorflow(force=args.stub_tensorflow)
  if args.xla_gpu_autotune_level is not None:
    grid.set_xla_gpu_autotune_level(args.xla_gpu_autotune_level)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ebgan_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  data = np.load(args.data)
  as_float = lambda u8: u8.astype(np.float32) / 127.5 - 1.0

  def train_batches(config, **unused):
    del config, unused
    while True:
      for batch in data['train_batches']:
        yield as_float(batch)

  def split_arrays(config, split='test'):
    del config
    return as_float(data[f'{split}_images']), data[f'{split}_labels'].astype(np.int32)

  input_pipeline.train_batches = train_batches
  input_pipeline.split_arrays = split_arrays
  if args.compilation_cache_dir:
    grid.enable_compilation_cache(args.compilation_cache_dir)
  points, _ = _load_sweep(args.config)
  start = time.perf_counter()
  summary = grid.run_grid(points, args.workdir, num_shards=args.num_shards,
                          shard_index=args.shard_index, max_populations=args.max_populations,
                          compile_workers=args.compile_workers)
  summary['trial_wall_s'] = time.perf_counter() - start
  print(json.dumps(summary))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  sub = parser.add_subparsers(dest='command', required=True)
  ex = sub.add_parser('export', help='Write the grid data (needs TensorFlow).')
  ex.add_argument('--config', required=True)
  ex.add_argument('--out', required=True)
  tr = sub.add_parser('run', help='Run the grid from exported data (no TensorFlow).')
  tr.add_argument('--config', required=True)
  tr.add_argument('--data', required=True)
  tr.add_argument('--workdir', required=True)
  tr.add_argument('--num_shards', type=int, default=1)
  tr.add_argument('--shard_index', type=int, default=0)
  tr.add_argument('--max_populations', type=int, default=None)
  tr.add_argument('--compile_workers', type=int, default=None)
  tr.add_argument('--compilation_cache_dir', default='')
  tr.add_argument('--xla_gpu_autotune_level', type=int, default=None)
  tr.add_argument('--stub_tensorflow', action='store_true',
                  help='Stub TensorFlow even where it is installed (to test this path).')
  args = parser.parse_args()
  export(args) if args.command == 'export' else run(args)


if __name__ == '__main__':
  main()
