"""The run's workdir: its config record, and refusing to mix two different runs in one.

Layout: `config.json` (the config the run started with), `checkpoints/`, `logs/`
(TensorBoard + metrics.jsonl), `samples/` (PNG grids).
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from ebgan_jax import paths

CONFIG_FILE = 'config.json'
# Fields that may change when a run is resumed: they set how long, how fast and how verbosely
# it runs, or where prepared data is cached, not what is trained.
RESUMABLE_FIELDS = frozenset({
    'num_epochs', 'total_steps', 'log_every_steps', 'checkpoint_every_steps',
    'sample_every_steps', 'keep_checkpoints', 'num_sample_images', 'tfds_data_dir',
    'steps_per_call', 'grad_norm_metrics', 'eval_every_steps',
})
# Groups of fields that may change too: how a run is scored, not what it trains.
RESUMABLE_GROUPS = ('eval.',)

# Fields added after runs were recorded, with the value that older runs (which lack the field)
# trained with: a missing field equal to it is no difference.
ADDED_FIELDS = {'matmul_precision': 'default'}


def _resumable(field: str) -> bool:
  return field.split('.')[-1] in RESUMABLE_FIELDS or field.startswith(RESUMABLE_GROUPS)


class ConfigMismatchError(ValueError):
  """The workdir holds a run whose config differs from the one given."""


def _flatten(d: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in d.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def load_config(workdir: paths.PathLike) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  path = paths.as_path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: {workdir} does not hold an ebgan_jax run. '
                            'Train one first with python -m ebgan_jax.main --workdir=...')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def record_config(workdir: paths.PathLike, config: ml_collections.ConfigDict,
                  write: bool = True) -> None:
  """Writes config.json for a new run, or checks that `config` matches the recorded one.

  Raises:
    ConfigMismatchError: naming the differing fields, when the workdir holds another run.
  """
  path = paths.as_path(workdir) / CONFIG_FILE
  new = json.loads(config.to_json())
  if path.exists():
    old = {**ADDED_FIELDS, **_flatten(json.loads(path.read_text()))}
    flat_new = {**ADDED_FIELDS, **_flatten(new)}
    differing = sorted(k for k in set(old) | set(flat_new)
                       if not _resumable(k)
                       and old.get(k, '<missing>') != flat_new.get(k, '<missing>'))
    if differing:
      details = ', '.join(f'{k}: {old.get(k, "<missing>")!r} -> {flat_new.get(k, "<missing>")!r}'
                          for k in differing[:8])
      raise ConfigMismatchError(
          f'{workdir} holds a run with a different config ({details}). Resuming would mix two '
          'runs: pass a new --workdir, or the same config to resume this run.')
  if write:
    paths.write_atomic(path, json.dumps(new, indent=2, sort_keys=True))
