"""A run trained on one device count is resumed, sampled, scored and FID'd on another.

The test process has 2 (faked) CPU devices; a subprocess of this file has 1. Each direction
trains a tiny fully-connected EBGAN-PT (`ebgan_jax.main`'s loop) and a tiny Ladder (the
semi-supervised driver's loop) on one side, then on the other side: resumes both, samples,
scores with the offline classifier (`ebgan_jax.evaluate`) and computes an Inception FID
(`ebgan_jax.inception`, random weights at a small input size). The checkpoints written by
the first side are untouched afterwards (nothing moved aside, no byte changed).

Before this change a checkpoint saved on 2 devices failed on 1 with orbax's "Topology
mismatch", was taken for damage and moved aside.
"""

import hashlib
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
FIRST_STEPS, MORE_STEPS = 4, 6


def _configs(root: pathlib.Path, steps: int):
  from tests import single_runs  # pylint: disable=g-import-not-at-top
  tfds_data_dir = str(root.parent / 'tfds')
  return (single_runs.tiny_fc_config(tfds_data_dir, steps),
          single_runs.tiny_ladder_config(tfds_data_dir, steps))


def train_first(root: pathlib.Path) -> None:
  """Trains both runs for FIRST_STEPS; writes a random classifier."""
  from ebgan_jax import classifier, ssl_train, train  # pylint: disable=g-import-not-at-top
  gan, ssl = _configs(root, FIRST_STEPS)
  train.train_and_evaluate(gan, root / 'gan')
  ssl_train.train_and_evaluate(ssl, root / 'ssl')
  classifier.save_classifier(root / 'classifier', classifier.init_params(jax.random.key(1)),
                             {'test_accuracy': 0.1})


def use_elsewhere(root: pathlib.Path, inception_weights: pathlib.Path) -> dict:
  """Resumes, samples, scores and FIDs the runs of `train_first`; returns what it saw."""
  from ebgan_jax import evaluate, inception, sample, ssl_train, train  # pylint: disable=g-import-not-at-top
  trainer, state, step = sample.load_generator(root / 'gan')
  images = sample.generate_images(trainer, state, 6, jax.random.key(0))
  scores = evaluate.evaluate_workdir(root / 'gan', root / 'classifier', num_samples=20)
  fid, fid_step = inception.fid_of_run(root / 'gan', str(inception_weights), num=8,
                                       batch_size=8, input_size=inception.MIN_INPUT_SIZE)
  gan, ssl = _configs(root, MORE_STEPS)
  gan_state = train.train_and_evaluate(gan, root / 'gan')
  ssl_state, ssl_results = ssl_train.train_and_evaluate(ssl, root / 'ssl')
  return dict(device_count=jax.device_count(), sample_step=step,
              sample_shape=list(images.shape), eval_step=scores['step'],
              i_prime=scores['i_prime'], fid=fid, fid_step=fid_step,
              gan_step=int(gan_state.step), ssl_step=int(ssl_state.step),
              ssl_test_error=ssl_results['test_error'])


def _digest(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _first_checkpoints(root: pathlib.Path) -> dict[str, str]:
  out = {}
  for run in ('gan', 'ssl'):
    for step in (2, 4):
      out |= {f'{run}/{step}/{k}': v
              for k, v in _digest(root / run / 'checkpoints' / str(step)).items()}
  return out


def _logged_steps(root: pathlib.Path, run: str) -> list[int]:
  lines = (root / run / 'logs' / 'metrics.jsonl').read_text().splitlines()
  return sorted({json.loads(line)['step'] for line in lines if 'train/d_loss' in line})


def _subprocess(use: pathlib.Path, train: pathlib.Path, weights: pathlib.Path,
                cache: pathlib.Path) -> dict:
  """Runs this file with 1 device: `use_elsewhere(use)`, then `train_first(train)`."""
  env = subprocess_env.subprocess_env(devices=1, **_compilation_cache_env(cache))
  result = subprocess.run([sys.executable, __file__, str(use), str(train), str(weights)],
                          env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _compilation_cache_env(cache: pathlib.Path) -> dict[str, str]:
  """JAX's persistent compilation cache: each side compiles its programs once (resuming and
  training the same config twice in one process would otherwise compile them twice)."""
  return {'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def _check(root: pathlib.Path, seen: dict, before: dict[str, str], devices: int) -> None:
  assert seen['device_count'] == devices
  assert seen['sample_step'] == seen['eval_step'] == seen['fid_step'] == FIRST_STEPS
  assert seen['sample_shape'] == [6, 32, 32, 1]
  assert np.isfinite(seen['i_prime']) and np.isfinite(seen['fid'])
  # Resumed, not restarted: the steps logged once each, and the first checkpoints intact.
  assert seen['gan_step'] == seen['ssl_step'] == MORE_STEPS
  assert _logged_steps(root, 'gan') == [2, 4, 6]
  assert _first_checkpoints(root) == before
  for run in ('gan', 'ssl'):
    names = sorted(p.name for p in (root / run / 'checkpoints').iterdir())
    assert names == ['2', '4', '6'], names


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('fast_compiles_module')]


def test_two_devices_to_one_and_one_to_two(tmp_path, random_inception):
  """One subprocess (1 device) uses the runs trained here (2 devices), then trains its own,
  which this process then uses: both directions for the cost of one process start."""
  here, there = tmp_path / 'from_2', tmp_path / 'from_1'
  train_first(here)
  before = _first_checkpoints(here)
  weights = random_inception[1]
  seen = _subprocess(here, there, weights, tmp_path / 'jax_cache')
  _check(here, seen, before, devices=1)
  before = _first_checkpoints(there)
  _check(there, use_elsewhere(there, weights), before, devices=2)


if __name__ == '__main__':
  sys.path.insert(0, str(REPO))
  from ebgan_jax import checkpoint  # pylint: disable=g-import-not-at-top
  checkpoint.quiet_orbax_logs()
  observed = use_elsewhere(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[3]))
  train_first(pathlib.Path(sys.argv[2]))
  print(json.dumps(observed))
