"""Checks a config before any work starts, naming each bad field, its value and what is allowed.

`validate(config, driver=...)` is called by every driver (`ebgan_jax.main`, the grid, the
semi-supervised experiment) when a run starts, before data is read or a model is built: a
bad value fails at once with every problem listed, instead of a ZeroDivisionError minutes
later (`--config.batch_size=0`) or a run that trains silently on nonsense
(`--config.loss.margin=-5`). Fields a config does not have are not checked.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections

DRIVERS = {
    'main': 'python -m ebgan_jax.main',
    'grid': 'python -m experiments.grid_search',
    'semi_supervised': 'python -m experiments.semi_supervised',
}
# Image sizes each model family is built for (App. C; Sec. 4.1 pads MNIST to 32).
FAMILY_IMAGE_SIZES = {'mlp': (28, 32), 'dcgan64': (64,), 'imagenet': (128, 256)}
OPTIMIZERS = ('adam', 'sgd')
MODEL_DTYPES = ('auto', 'float32', 'bfloat16')


class ConfigError(ValueError):
  """A config field holds a value outside what the code accepts."""


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return None
    node = node[part]
  return node


class _Checker:
  """Collects the problems of one config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.problems: list[str] = []

  def check(self, field: str, ok: Callable[[Any], bool], allowed: str) -> None:
    value = _get(self.config, field)
    if value is None:
      return
    try:
      good = bool(ok(value))
    except (TypeError, ValueError):
      good = False
    if not good:
      self.problems.append(f'config.{field} = {value!r}: {allowed}')

  def number(self, field: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """`field` is a (finite, optionally integer) number in the given interval."""
    def ok(v):
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
      if integer and int(v) != v:
        return False
      if low is not None and (v <= low if low_open else v < low):
        return False
      return not (high is not None and (v >= high if high_open else v > high))
    left = '' if low is None else ('> ' if low_open else '>= ') + f'{low:g}'
    right = '' if high is None else ('< ' if high_open else '<= ') + f'{high:g}'
    kind = 'an integer' if integer else 'a number'
    self.check(field, ok, f'must be {kind} ' + ' and '.join(s for s in (left, right) if s))

  def one_of(self, field: str, choices: tuple) -> None:
    self.check(field, lambda v: v in choices, f'must be one of {list(choices)}')

  def divides(self, field: str, by: int, what: str) -> None:
    self.check(field, lambda v: v > 0 and v % by == 0,
               f'must be a positive multiple of {by} ({what})')


def validate(config: ml_collections.ConfigDict, *, driver: str = 'main',
             process_count: int = 1, device_count: int = 1,
             known_datasets: tuple[str, ...] = ()) -> None:
  """Raises ConfigError listing every field of `config` outside its allowed range.

  Args:
    config: the experiment config.
    driver: which command runs it ('main', 'grid', 'semi_supervised'): a config written for
      another driver is refused with the command to use.
    process_count, device_count: the processes and the global device count (all
      processes' devices) the global batch must split over.
    known_datasets: tfds/embedded dataset names the input pipeline reads (checked when set
      and the config names no `data_dir` or image folder).
  """
  from ebgan_jax import population, step  # pylint: disable=g-import-not-at-top
  c = _Checker(config)
  experiment = config.get('experiment', 'main')  # configs/mnist_ssl.py: 'semi_supervised'.
  if (driver == 'semi_supervised') != (experiment == 'semi_supervised'):
    c.problems.append(
        f'this config is trained by `{DRIVERS.get(experiment, DRIVERS["main"])}`, not '
        f'`{DRIVERS[driver]}`' + ('' if experiment == 'semi_supervised' else
                                  ' (semi-supervised configs are configs/mnist_ssl.py)'))
  if driver == 'grid' and 'grid' not in config:
    c.problems.append('this config has no `grid` block: grids are configs/mnist_grid.py:VARIANT')

  # Schedule and cadences.
  c.number('seed', 0, integer=True)
  c.number('num_epochs', 0, integer=True)
  c.number('total_steps', 0, integer=True)
  if not (config.get('total_steps', 0) or 0) > 0 and 'num_epochs' in config:
    c.number('num_epochs', 0, low_open=True, integer=True)
  for field in ('log_every_steps', 'checkpoint_every_steps', 'sample_every_steps',
                'steps_per_call', 'keep_checkpoints', 'num_sample_images'):
    c.number(field, 1, integer=True)
  c.number('eval_every_steps', 0, integer=True)  # 0: no scores while training.

  # Data.
  devices = max(device_count, process_count)
  c.divides('batch_size', devices,
            f'the global batch splits over {process_count} process(es) x '
            f'{devices // process_count} local device(s); choose a multiple, or fewer devices')
  c.one_of('channels', (1, 3))
  c.number('shuffle_buffer', 0, integer=True)
  c.number('center_crop', 0, integer=True)
  c.number('resize_size', 0, integer=True)
  resize = config.get('resize_size', 0) or 0
  if resize and isinstance(config.get('image_size'), int) and resize < config.image_size:
    c.problems.append(f'config.resize_size = {resize}: must be 0 or >= config.image_size '
                      f'({config.image_size})')
  has_files = bool(config.get('data_dir', '') or config.get('image_folder', '') or
                   str(config.get('dataset', '')).startswith('folder:'))
  if known_datasets and not has_files:
    c.check('dataset', lambda v: v in known_datasets,
            f'unknown dataset; use one of {list(known_datasets)}, or a folder of MNIST-format '
            'IDX files or an .npz file (--config.data_dir=PATH), or a folder of JPEG/PNG '
            'images (--config.image_folder=PATH)')

  # Model.
  family = _get(config, 'model.family')
  c.one_of('model.family', tuple(FAMILY_IMAGE_SIZES))
  if family in FAMILY_IMAGE_SIZES:
    c.check('image_size', lambda v: v in FAMILY_IMAGE_SIZES[family],
            f'the {family!r} models are built for image_size in '
            f'{list(FAMILY_IMAGE_SIZES[family])}')
  c.number('model.latent_dim', 1, integer=True)
  c.number('model.n_layer_g', 2, integer=True)
  c.number('model.n_layer_d', 2, integer=True)
  c.number('model.size_g', 1, integer=True)
  c.number('model.size_d', 1, integer=True)
  c.check('model.dropout_d', lambda v: isinstance(v, bool), 'must be true or false')
  c.number('model.dropout_rate', 0, 1, high_open=True)
  c.number('model.noise_std', 0)
  c.number('model.width_mult', 0, low_open=True)
  c.one_of('model.dtype', MODEL_DTYPES)

  # Losses.
  kinds = ('ebgan', 'none') if experiment == 'semi_supervised' else ('ebgan', 'gan')
  c.one_of('loss.kind', kinds)
  c.number('loss.margin', 0)
  c.number('loss.margin_decay_steps', 0, integer=True)
  c.number('loss.pt_weight', 0)
  for field in ('loss.class_weight', 'loss.recon_weight', 'loss.hinge_weight'):
    c.number(field, 0)

  # Optimizers.
  c.one_of('optim.optim_d', OPTIMIZERS)
  c.one_of('optim.optim_g', OPTIMIZERS)
  c.number('optim.lr_d', 0, low_open=True)
  c.number('optim.lr_g', 0, low_open=True)
  c.number('optim.b1', 0, 1, high_open=True)
  c.number('optim.b2', 0, 1, high_open=True)
  c.number('optim.lr_decay_start', 0, integer=True)
  c.number('ema_decay', 0, 1, high_open=True)
  c.one_of('matmul_precision', step.MATMUL_PRECISIONS)

  # Evaluation, grid, semi-supervised blocks.
  for field in ('eval.num_samples', 'eval.batch_size', 'eval.classifier_epochs',
                'eval.classifier_batch_size'):
    c.number(field, 1, integer=True)
  c.number('eval.classifier_train_examples', 0, integer=True)
  best = _get(config, 'eval.best_metric')
  if best:
    from ebgan_jax import evaluate  # pylint: disable=g-import-not-at-top
    names = {f'eval/{k}' for k in (*evaluate.FLOAT_SCORES, 'fid', 'modes_covered')}
    c.check('eval.best_metric', lambda v: v in names,
            f"must be '' or one of {sorted(names)}")
  c.number('grid.seeds', 1, integer=True)
  c.number('grid.max_population', 0, integer=True)
  c.number('grid.steps_per_call', 1, integer=True)
  c.number('grid.num_sample_images', 1, integer=True)
  c.one_of('grid.population_strategy', population.STRATEGIES)
  if experiment == 'semi_supervised':
    c.check('ssl.num_labelled', lambda v: v > 0 and v % 10 == 0,
            'must be a positive multiple of the 10 classes (Table 2: 100, 200, 1000)')
    c.divides('ssl.labelled_batch_size', devices,
              f'it splits over the {devices} device(s) as the unlabelled batch does (App. D uses '
              '100: set --config.ssl.num_devices to a divisor of it, or run one seed per device)')
    c.number('ssl.eval_batch_size', 1, integer=True)
    c.number('ssl.num_devices', 0, integer=True)
    c.number('generator_off_step', 0, integer=True)

  if c.problems:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(c.problems) +
                      '\nFix these fields (e.g. --config.FIELD=VALUE) and run again.')
