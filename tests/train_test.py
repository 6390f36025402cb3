"""Tests of the training loop, in-process and through `python -m ebgan_jax.main`.

A tiny fully-connected EBGAN-PT (widths 32, 2-layer G, batch 8) on the embedded digits; runs
are a few steps long. Subprocesses get the same two faked CPU devices as this process.
"""

import hashlib
import json
import logging
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from configs import mnist_fc
from ebgan_jax import checkpoint, data, sample, step, train
from ebgan_jax import workdir as workdir_lib
from tests import subprocess_env as subprocess_env_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    'model.size_g': 32, 'model.size_d': 32, 'model.n_layer_g': 2, 'batch_size': 8,
    'log_every_steps': 2, 'checkpoint_every_steps': 2, 'sample_every_steps': 4,
    'num_sample_images': 16, 'keep_checkpoints': 3,
    'eval_every_steps': 0,  # Scores while training: evaluator_test.py.
}
TIMEOUT = 300  # seconds, for any one subprocess


pytestmark = pytest.mark.usefixtures('fast_compiles_module')


def overrides(tfds_data_dir, **extra):
  return {**TINY, 'tfds_data_dir': tfds_data_dir, **{k.replace('__', '.'): v
                                                      for k, v in extra.items()}}


def make_config(tfds_data_dir, **extra):
  config = mnist_fc.get_config('ebgan_pt')
  for key, value in overrides(tfds_data_dir, **extra).items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def main_command(workdir, tfds_data_dir, **extra):
  return [sys.executable, '-m', 'ebgan_jax.main',
          f'--config={REPO}/configs/mnist_fc.py:ebgan_pt', f'--workdir={workdir}',
          *[f'--config.{k}={v}' for k, v in overrides(tfds_data_dir, **extra).items()]]


def subprocess_env():
  return subprocess_env_lib.subprocess_env(devices=2)


def run(cmd, timeout=TIMEOUT):
  return subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def restore(workdir, step_number):
  """The state saved at `step_number` in `workdir`, as numpy (config read from the workdir)."""
  trainer = step.Trainer(workdir_lib.load_config(workdir))
  target = trainer.create_state(jax.random.key(0))
  ckpt = checkpoint.Checkpointer(pathlib.Path(workdir) / 'checkpoints')
  try:
    return jax.tree.map(np.asarray, ckpt.restore(step_number, target))
  finally:
    ckpt.close()


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def tree_digest(folder):
  """{relative path: sha1 of bytes} for every file under `folder`."""
  folder = pathlib.Path(folder)
  return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def poison_step(monkeypatch, bad_step):
  """Makes the training batch of step `bad_step` (1-based) all NaN."""
  original = data.train_batches

  def poisoned_batches(config, *, start_step=0, **kwargs):
    for i, batch in enumerate(original(config, start_step=start_step, **kwargs)):
      yield np.full_like(batch, np.nan) if start_step + i + 1 == bad_step else batch

  monkeypatch.setattr(data, 'train_batches', poisoned_batches)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, tfds_data_dir):
  """An uninterrupted in-process run of 8 steps: checkpoints 4, 6, 8 (keep 3)."""
  workdir = tmp_path_factory.mktemp('reference')
  train.train_and_evaluate(make_config(tfds_data_dir, total_steps=8), str(workdir))
  return workdir


@pytest.mark.slow
def test_resume_in_a_new_process_matches_uninterrupted_run(reference, tmp_path,
                                                          tfds_data_dir):
  workdir = tmp_path / 'split'
  train.train_and_evaluate(make_config(tfds_data_dir, total_steps=4), str(workdir))
  assert checkpoint_steps(workdir) == [2, 4]
  # Only total_steps changes: the run resumes (a new process: nothing shared in memory) and
  # stops 2 steps later, at the reference's checkpoint of step 6.
  result = run(main_command(workdir, tfds_data_dir, total_steps=6))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 4' in result.stderr
  assert checkpoint_steps(workdir) == [2, 4, 6]
  resumed, uninterrupted = restore(workdir, 6), restore(reference, 6)
  assert int(resumed.step) == 6
  chex.assert_tree_all_finite(resumed)
  chex.assert_trees_all_close(resumed, uninterrupted, atol=1e-6, rtol=1e-6)
  # The run did train, by far more than the tolerance: step 6 differs from step 4.
  moved = np.abs(restore(workdir, 4).g.params['output']['kernel']
                 - resumed.g.params['output']['kernel'])
  assert moved.max() > 1e-4


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_rerun_resumes(tmp_path, tfds_data_dir):
  workdir = tmp_path / 'preempted'
  cmd = main_command(workdir, tfds_data_dir, total_steps=200, log_every_steps=1,
                     checkpoint_every_steps=1000, sample_every_steps=1000)
  metrics_file = workdir / 'logs' / 'metrics.jsonl'
  proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + TIMEOUT
    while not (metrics_file.exists() and metrics_file.read_text().strip()):
      assert proc.poll() is None, f'exited early: {proc.communicate()[1][-3000:]}'
      assert time.time() < deadline, 'no step logged in time'
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, stderr[-3000:]
  steps = checkpoint_steps(workdir)
  assert len(steps) == 1 and 1 <= steps[0] < 200, (steps, stderr[-3000:])
  stop_step = steps[0]
  assert f'Stopped by SIGTERM at step {stop_step}' in stderr
  assert int(restore(workdir, stop_step).step) == stop_step

  result = run(cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from the checkpoint of step {stop_step}' in result.stderr
  assert checkpoint_steps(workdir) == [stop_step, 200]
  assert int(restore(workdir, 200).step) == 200


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(
    monkeypatch, tmp_path, tfds_data_dir):
  """A NaN batch at step 5 makes the losses and all later params NaN."""
  poison_step(monkeypatch, 5)
  workdir = tmp_path / 'nan'
  # log_every 100: the non-finite value is first seen by the save at step 6.
  config = make_config(tfds_data_dir, total_steps=8, log_every_steps=100)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 5\b'):
    train.train_and_evaluate(config, str(workdir))
  assert checkpoint_steps(workdir) == [2, 4]
  last_good = restore(workdir, 4)
  chex.assert_tree_all_finite(last_good)
  assert not any(p.name.startswith(('6', '8')) for p in (workdir / 'checkpoints').iterdir())


def test_a_non_finite_state_with_finite_losses_is_never_saved(tmp_path, tfds_data_dir,
                                                              monkeypatch):
  """SGD at lr = inf for G: step 1's losses (from the initial params) are finite, the params
  it leaves are +-inf (NaN where a gradient is 0). The save at step 1 must refuse them.

  config_checks rejects lr = inf up front (config_checks_test); it is bypassed here to reach
  the guard behind it, which also catches overflows no config check can foresee."""
  monkeypatch.setattr(train.config_checks, 'validate', lambda *a, **k: None)
  workdir = tmp_path / 'overflow'
  config = make_config(tfds_data_dir, total_steps=3, log_every_steps=100,
                       checkpoint_every_steps=1, sample_every_steps=100,
                       optim__optim_g='sgd', optim__lr_g=float('inf'))
  with pytest.raises(train.NonFiniteStateError, match=r"after step 1\b.*\.g\.params\['"):
    train.train_and_evaluate(config, str(workdir))
  assert not [p for p in (workdir / 'checkpoints').iterdir() if p.name[0].isdigit()]
  # Only the params moved: the step's metrics were finite, so the loss check alone passes.
  records = (workdir / 'logs' / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(r)['step'] for r in records] == [1]
  assert all(np.isfinite(v) for v in json.loads(records[0]).values())


def test_assert_state_finite_names_the_step_and_the_bad_leaves():
  finite = {'w': np.ones((2, 3), np.float32), 'step': np.int32(4), 'key': jax.random.key(0),
            'none': None}
  train.assert_state_finite(finite, 4)  # Integer and key leaves are not floats: skipped.
  bad = {**finite, 'g': {'b': np.array([0.0, np.inf], np.float32)},
         'h': [np.array(np.nan, np.float32)]}
  with pytest.raises(train.NonFiniteStateError,
                     match=r"after step 9 .* \['g'\]\['b'\], \['h'\]\[0\],.*learning rate"):
    train.assert_state_finite(bad, 9)


def test_corrupt_latest_checkpoint_is_moved_aside_and_previous_one_used(
    reference, tmp_path, tfds_data_dir, caplog):
  workdir = tmp_path / 'corrupt'
  shutil.copytree(reference, workdir)
  expected = restore(reference, 8)
  manifest = workdir / 'checkpoints' / '8' / 'default' / 'manifest.ocdbt'
  assert manifest.exists()
  manifest.write_bytes(b'\x00garbage\x00' * 8)
  damaged = tree_digest(workdir / 'checkpoints' / '8')

  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(make_config(tfds_data_dir, total_steps=8), str(workdir))

  assert 'Checkpoint 8 is damaged' in caplog.text
  # Kept, byte for byte, for inspection.
  assert tree_digest(workdir / 'checkpoints' / 'corrupt-8') == damaged
  # Resumed from 6, retrained steps 7 and 8: the same state as the uninterrupted run.
  assert checkpoint_steps(workdir) == [4, 6, 8]
  chex.assert_trees_all_close(restore(workdir, 8), expected, atol=1e-6, rtol=1e-6)


def test_other_config_is_refused_and_checkpoints_untouched(reference, tmp_path,
                                                           tfds_data_dir):
  workdir = tmp_path / 'mismatch'
  shutil.copytree(reference, workdir)
  before = tree_digest(workdir / 'checkpoints')
  config_before = (workdir / 'config.json').read_text()
  with pytest.raises(workdir_lib.ConfigMismatchError, match='loss.margin'):
    train.train_and_evaluate(make_config(tfds_data_dir, total_steps=8, loss__margin=20.0),
                             str(workdir))
  assert tree_digest(workdir / 'checkpoints') == before
  assert (workdir / 'config.json').read_text() == config_before


@pytest.mark.slow
def test_sample_cli_writes_uint8_images_and_explains_missing_runs(reference, tmp_path):
  out = tmp_path / 'out' / 'images.npz'
  sample_cmd = [sys.executable, '-m', 'ebgan_jax.sample', '--num_samples=10', f'--out={out}']
  procs = [subprocess.Popen(sample_cmd + [f'--workdir={w}'], env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for w in (reference, tmp_path / 'no_such_run')]
  try:
    (_, ok_err), (_, missing_err) = [p.communicate(timeout=TIMEOUT) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert procs[0].returncode == 0, ok_err[-3000:]
  with np.load(out) as data:
    images = data['images']
  assert images.dtype == np.uint8
  chex.assert_shape(images, (10, 32, 32, 1))
  assert images.std() > 0
  assert procs[1].returncode != 0
  assert 'does not hold an ebgan_jax run' in missing_err

  # A workdir with a config but no checkpoint.
  empty = tmp_path / 'untrained'
  empty.mkdir()
  shutil.copy(reference / 'config.json', empty / 'config.json')
  with pytest.raises(FileNotFoundError, match='No restorable checkpoint'):
    sample.load_generator(str(empty))


def test_workdir_has_sample_grids_metrics_and_tensorboard_events(reference):
  pngs = sorted(p.name for p in (reference / 'samples').glob('*.png'))
  assert pngs == ['step_0000004.png', 'step_0000008.png']  # sample_every_steps = 4
  assert (reference / 'samples' / pngs[0]).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  records = [json.loads(line) for line in
             (reference / 'logs' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [2, 4, 6, 8]  # log_every_steps = 2
  keys = {'train/d_loss', 'train/g_loss', 'train/energy_real', 'train/energy_fake',
          'train/pt', 'train/margin'}
  for r in records:
    assert keys <= set(r), sorted(r)
    assert r['train/margin'] == 10.0            # m = 10, no decay
    assert 0.0 <= r['train/pt'] <= 1.0           # a mean squared cosine
    assert r['train/energy_real'] >= 0.0 and r['train/energy_fake'] >= 0.0

  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  events = list((reference / 'logs').glob('events.out.tfevents.*'))
  assert events
  tags = set()
  for path in events:
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags.update(v.tag for v in event.summary.value)
  assert keys | {'samples'} <= tags, sorted(tags)


def test_call_length_stops_at_every_log_checkpoint_and_sample_step():
  # From step 0 with calls of 10: logs every 4 cut the first call to 4 steps.
  assert train.call_length(0, 100, 10, (4, 1000, 1000)) == 4
  assert train.call_length(4, 100, 10, (4, 1000, 1000)) == 4
  assert train.call_length(0, 100, 10, (100, 1000, 1000)) == 10
  assert train.call_length(95, 100, 10, (100, 1000, 1000)) == 5   # The run's end.
  assert train.call_length(17, 100, 10, (20, 25, 1000)) == 3      # Next log at 20.
  assert train.call_length(20, 100, 10, (20, 25, 1000)) == 5      # Next checkpoint at 25.
  assert train.call_length(3, 100, 1, (4, 4, 4)) == 1


def test_steps_per_call_trains_the_same_steps_and_logs_the_same_points(
    monkeypatch, tmp_path, tfds_data_dir):
  # 12 steps, logs and checkpoints every 8: three scanned calls of 4 (the second ends at the
  # cadence's step 8); against a run of one step per call.
  calls = []
  jit_train_steps = step.jit_train_steps

  def counted(trainer, mesh):
    steps = jit_train_steps(trainer, mesh)
    def call(state, images, key):
      calls.append(images.shape[0])
      return steps(state, images, key)
    return call

  monkeypatch.setattr(step, 'jit_train_steps', counted)
  runs = {}
  for k in (1, 4):
    workdir = tmp_path / f'k{k}'
    config = make_config(tfds_data_dir, total_steps=12, steps_per_call=k, log_every_steps=8,
                         checkpoint_every_steps=8, sample_every_steps=8)
    train.train_and_evaluate(config, str(workdir))
    records = [json.loads(line) for line in
               (workdir / 'logs' / 'metrics.jsonl').read_text().splitlines()]
    runs[k] = workdir, records
  assert calls == [4, 4, 4]
  assert [r['step'] for r in runs[4][1]] == [r['step'] for r in runs[1][1]] == [8, 12]
  for scanned, single in zip(runs[4][1], runs[1][1]):
    # The logged means are the same 8 or 4 steps' metrics (round-off apart).
    for key in ('train/d_loss', 'train/g_loss', 'train/energy_real', 'train/pt'):
      np.testing.assert_allclose(scanned[key], single[key], rtol=1e-5, err_msg=key)
  assert checkpoint_steps(runs[4][0]) == checkpoint_steps(runs[1][0]) == [8, 12]
  chex.assert_trees_all_close(restore(runs[4][0], 12), restore(runs[1][0], 12),
                              atol=1e-5, rtol=1e-5)
  # Resuming a run with another steps_per_call is allowed (speed only).
  workdir_lib.record_config(runs[4][0], make_config(tfds_data_dir, total_steps=12,
                                                    steps_per_call=1, log_every_steps=8,
                                                    checkpoint_every_steps=8,
                                                    sample_every_steps=8), write=False)


def test_a_nan_inside_a_scanned_call_is_named_by_its_own_step(monkeypatch, tmp_path,
                                                              tfds_data_dir):
  poison_step(monkeypatch, 6)
  workdir = tmp_path / 'nan_scanned'
  # Calls of 4 steps: 1-4, 5-8 (step 6 poisoned, its call's 2nd step); the save at 8 sees it.
  config = make_config(tfds_data_dir, total_steps=12, steps_per_call=4, log_every_steps=100,
                       checkpoint_every_steps=4, sample_every_steps=100)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 6\b'):
    train.train_and_evaluate(config, str(workdir))
  assert checkpoint_steps(workdir) == [4]
