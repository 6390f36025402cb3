"""Tests of ebgan_jax/ssl_population.py: Table 2's runs trained together (Sec. 4.2, App. D).

Tiny networks (a 32-16-10 Ladder, a 2-layer G of width 32) on the embedded digits; three
EBGAN-LN members with their own seeds, labelled subsets and label counts, across the
generator's switch-off, against the same three runs trained alone by `ssl_train`.
"""

import json

import chex
import jax
import numpy as np
import pytest

from configs import mnist_ssl
from ebgan_jax import ssl_population, ssl_train

pytestmark = pytest.mark.usefixtures('fast_compiles_module')

MEMBERS = ((0, 20), (1, 20), (1, 40))  # (seed = labelled-subset seed, number of labels)


def _config(tfds_data_dir, seed, num_labelled, total_steps=4):
  config = mnist_ssl.get_config('ebgan_ln,runlocal')
  config.tfds_data_dir = tfds_data_dir
  config.model.ladder_widths = (32, 16, 10)
  config.model.n_layer_g, config.model.size_g = 2, 32
  config.batch_size = config.ssl.labelled_batch_size = 8
  config.ssl.num_devices = 1  # The population runs on one device: compare like with like.
  config.total_steps, config.generator_off_step = total_steps, 2
  config.steps_per_call, config.log_every_steps = 2, 2
  config.checkpoint_every_steps, config.sample_every_steps = 2, 100
  config.ssl.eval_batch_size = 500
  # SGD: Adam would turn float rounding (one program against another) in near-zero
  # gradients into differences of a sizeable fraction of lr.
  config.optim.optim_d = config.optim.optim_g = 'sgd'
  config.optim.lr_d = config.optim.lr_g = 0.1
  config.seed = config.ssl.labelled_seed = seed
  config.ssl.num_labelled = num_labelled
  return config


@pytest.fixture(scope='module')
def alone(tfds_data_dir, tmp_path_factory):
  """The three members trained alone for 4 steps: [(state, results, workdir)]."""
  out = []
  for seed, n in MEMBERS:
    workdir = tmp_path_factory.mktemp(f'alone_{seed}_{n}')
    state, results = ssl_train.train_and_evaluate(_config(tfds_data_dir, seed, n), workdir)
    out.append((jax.device_get(state), results, workdir))
  return out


def _restored(workdir, like):
  ckpt = ssl_population.checkpoint.Checkpointer(workdir / 'checkpoints')
  try:
    state, step = ckpt.restore_latest(like)
  finally:
    ckpt.close()
  return jax.device_get(state), step


def _eval_errors(workdir):
  lines = (workdir / 'logs' / 'metrics.jsonl').read_text().splitlines()
  return {r['step']: r['eval/test_error'] for r in map(json.loads, lines)
          if 'eval/test_error' in r}


@pytest.mark.parametrize('strategy', ['unroll', 'vmap'])
def test_members_equal_their_runs_alone_and_resume(alone, tfds_data_dir, tmp_path, strategy):
  workdirs = [tmp_path / f'm{i}' for i in range(len(MEMBERS))]
  # Two steps (G on), stopped; then resumed to four (G off from step 2).
  short = [_config(tfds_data_dir, s, n, total_steps=2) for s, n in MEMBERS]
  assert all(r['steps'] == 2 for r in ssl_population.train_population(
      short, workdirs, strategy=strategy))
  assert [ssl_population.resume_step(w) for w in workdirs] == [2, 2, 2]
  configs = [_config(tfds_data_dir, s, n) for s, n in MEMBERS]
  results = ssl_population.train_population(configs, workdirs, strategy=strategy)
  for (state, alone_results, alone_dir), got, workdir in zip(alone, results, workdirs):
    member, step = _restored(workdir, state)
    assert step == 4
    chex.assert_trees_all_close(member, state, rtol=1e-5, atol=1e-6)
    # Scored at every checkpoint (2 and 4) and at the end, as the run alone.
    np.testing.assert_allclose(list(_eval_errors(workdir).values()),
                               list(_eval_errors(alone_dir).values()), atol=1e-3)
    # Each step logged once: the second call resumed from step 2 rather than starting over.
    lines = (workdir / 'logs' / 'metrics.jsonl').read_text().splitlines()
    assert [r['step'] for r in map(json.loads, lines) if 'train/d_loss' in r] == [2, 4]
    assert abs(got['test_error'] - alone_results['test_error']) <= 1e-3  # 2 of 2,000 images
    assert (got['seed'], got['num_labelled'], got['population_size']) == (
        alone_results['seed'], alone_results['num_labelled'], 3)
    assert json.loads((workdir / 'results.json').read_text())['steps'] == 4
  # The members differ from one another (own seeds, subsets and label counts).
  assert not np.allclose(alone[0][0].d.params['enc_dense_1']['kernel'],
                         alone[1][0].d.params['enc_dense_1']['kernel'])


def test_members_must_share_all_but_seeds_and_label_counts(tfds_data_dir, tmp_path):
  configs = [_config(tfds_data_dir, 0, 20), _config(tfds_data_dir, 1, 20)]
  configs[1].optim.lr_d = 0.2
  with pytest.raises(ValueError, match='differ only in'):
    ssl_population.train_population(configs, [tmp_path / 'a', tmp_path / 'b'])


def test_a_member_whose_state_is_not_finite_is_stopped_and_never_saved(tfds_data_dir, tmp_path,
                                                                        monkeypatch):
  """SGD at lr = inf for G: step 1's losses (from the initial params) are finite, the params
  it leaves are not, so the loss check alone would save them at step 1. config_checks
  rejects lr = inf up front; it is bypassed to reach the guard behind it."""
  monkeypatch.setattr(ssl_population.config_checks, 'validate', lambda *a, **k: None)
  configs = [_config(tfds_data_dir, 0, 20, total_steps=2)]  # A population of one: cheaper.
  for c in configs:
    c.steps_per_call = c.log_every_steps = c.checkpoint_every_steps = 1
    c.optim.lr_g = float('inf')
  workdirs = [tmp_path / 'a']
  results = ssl_population.train_population(configs, workdirs, strategy='unroll')
  for result, workdir in zip(results, workdirs):
    assert list(result) == ['error']  # No results record: the member did not finish.
    assert 'after step 1 has non-finite values' in result['error']
    assert not [p for p in (workdir / 'checkpoints').iterdir() if p.name[0].isdigit()]
    assert not (workdir / 'results.json').exists()


def test_a_bad_config_value_is_refused_before_any_work(tfds_data_dir, tmp_path):
  configs = [_config(tfds_data_dir, 0, 20)]
  configs[0].loss.margin = -5.0
  with pytest.raises(ssl_population.config_checks.ConfigError, match=r'loss\.margin = -5'):
    ssl_population.train_population(configs, [tmp_path / 'a'])
  assert not (tmp_path / 'a').exists()
