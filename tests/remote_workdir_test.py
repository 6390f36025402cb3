"""A run whose workdir is `gs://...`, on a mocked GCS (tests/remote_fs.py).

Before epath, every path went through pathlib, and `--workdir=gs://bucket/run` wrote to a
local folder `./gs:/bucket/run`.
"""

import json
import math
import pathlib
import shutil

import jax
import pytest
from tensorboard.backend.event_processing import event_accumulator

from tests import remote_fs, single_runs
from ebgan_jax import classifier, evaluate, inception, sample, ssl_train, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures('fast_compiles_module')]
RUN = 'gs://bucket/runs/demo'


def metrics_steps(local_run: pathlib.Path) -> list[int]:
  return [json.loads(line)['step']
          for line in (local_run / 'logs' / 'metrics.jsonl').read_text().splitlines()]


def test_a_run_on_gs_trains_resumes_falls_back_and_is_sampled(tmp_path, monkeypatch,
                                                              tfds_data_dir, random_inception):
  bucket_root = tmp_path / 'bucket_store'
  bucket_root.mkdir()
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  local_run = bucket_root / RUN[len('gs://'):]
  with remote_fs.fake_gcs(bucket_root):
    train.train_and_evaluate(single_runs.tiny_fc_config(tfds_data_dir, 4), RUN)
    assert sorted(p.name for p in (local_run / 'checkpoints').iterdir()) == ['2', '4']
    assert (local_run / 'config.json').exists()
    assert sorted(p.name for p in (local_run / 'samples').iterdir()) == [
        'step_0000002.png', 'step_0000004.png']
    assert metrics_steps(local_run) == [2, 4]

    # Resume: appends to the same metrics.jsonl object, adds checkpoint 6.
    train.train_and_evaluate(single_runs.tiny_fc_config(tfds_data_dir, 6), RUN)
    assert metrics_steps(local_run) == [2, 4, 6]

    # A damaged newest checkpoint on the bucket is moved aside there, and 4 restored.
    manifest = local_run / 'checkpoints' / '6' / 'default' / 'manifest.ocdbt'
    manifest.write_bytes(b'\0' * 64)
    state = train.train_and_evaluate(single_runs.tiny_fc_config(tfds_data_dir, 6), RUN)
    assert int(state.step) == 6
    names = sorted(p.name for p in (local_run / 'checkpoints').iterdir())
    assert names == ['2', '4', '6', 'corrupt-6'], names

    # Sampling and scoring read the run from the bucket.
    trainer, restored, step = sample.load_generator(RUN)
    assert step == 6 and int(restored.step) == 6
    assert sample.generate_images(trainer, restored, 3, jax.random.key(0)).shape == (3, 32, 32, 1)
    clf_dir = 'gs://bucket/cache/classifier'
    classifier.save_classifier(clf_dir, classifier.init_params(jax.random.key(1)),
                               {'test_accuracy': 0.1})
    scores = evaluate.evaluate_workdir(RUN, clf_dir, num_samples=20)
    assert scores['step'] == 6
    assert remote_fs.exists(bucket_root, RUN + '/eval.json')
    assert remote_fs.exists(bucket_root, clf_dir + '/classifier.json')
    # Inception weights on the bucket (random ones, at the smallest input size).
    weights = 'gs://bucket/weights/inception.npz'
    (bucket_root / 'bucket' / 'weights').mkdir(parents=True)
    shutil.copy(random_inception[1], bucket_root / weights[len('gs://'):])
    fid, fid_step = inception.fid_of_run(RUN, weights, num=8, batch_size=8,
                                         input_size=inception.MIN_INPUT_SIZE)
    assert fid_step == 6 and math.isfinite(fid)

  # TensorBoard reads the event files written through the mocked bucket.
  events = event_accumulator.EventAccumulator(str(local_run / 'logs'),
                                              size_guidance={'images': 0})
  events.Reload()
  assert sorted({e.step for e in events.Scalars('train/d_loss')}) == [2, 4, 6]
  assert 'samples' in events.Tags()['images']
  # Nothing landed in a local folder named after the URL.
  assert not (cwd / 'gs:').exists() and not list(cwd.iterdir())


def test_a_semi_supervised_run_on_gs_trains_and_resumes(tmp_path, monkeypatch, tfds_data_dir):
  """The Table 2 driver's loop (a tiny Ladder): checkpoints, logs, results.json on the bucket."""
  bucket_root, cwd = tmp_path / 'bucket_store', tmp_path / 'cwd'
  bucket_root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  run = 'gs://bucket/runs/ladder'
  local_run = bucket_root / run[len('gs://'):]
  config = single_runs.tiny_ladder_config(tfds_data_dir, total_steps=2)
  with remote_fs.fake_gcs(bucket_root):
    ssl_train.train_and_evaluate(config, run)
    config.total_steps = 4  # Resumed from step 2 on the bucket, not restarted.
    state, results = ssl_train.train_and_evaluate(config, run)
  assert int(state.step) == 4 and results['steps'] == 4
  assert sorted(p.name for p in (local_run / 'checkpoints').iterdir()) == ['2', '4']
  assert json.loads((local_run / 'results.json').read_text())['steps'] == 4
  lines = (local_run / 'logs' / 'metrics.jsonl').read_text().splitlines()
  assert [r['step'] for r in map(json.loads, lines) if 'train/d_loss' in r] == [2, 4]
  assert (local_run / 'config.json').exists()
  assert not list(cwd.iterdir())
