"""Tests of ebgan_jax/semi_supervised.py and experiments/semi_supervised.py (Sec. 4.2, App. D).

The Ladder's own tests (shapes, gamma-free BN, shared weights) are in ladder_test.py and the
labelled subsets' in ssl_data_test.py. Most tests here shrink the networks (a 64-32-10 Ladder,
a 2-layer G of width 64) so that they compile in seconds; the schedule and data are the
config's own (`runlocal`).
"""

import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import mnist_ssl
from ebgan_jax import semi_supervised, sharding
from experiments import semi_supervised as experiment

SMALL_WIDTHS = (64, 32, 10)
IMAGE = (28, 28, 1)


pytestmark = pytest.mark.usefixtures('fast_compiles_module')


def _small_config(variant: str, tfds_data_dir: str = '', **overrides):
  config = mnist_ssl.get_config(f'{variant},runlocal')
  config.tfds_data_dir = tfds_data_dir
  config.model.ladder_widths = SMALL_WIDTHS
  config.model.n_layer_g, config.model.size_g = 2, 64
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _batches(seed: int, batch: int = 8):
  """A labelled (images, labels) and an unlabelled batch of random images in [-1, 1]."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x_lab = jax.random.uniform(k1, (batch, *IMAGE), minval=-1.0, maxval=1.0)
  labels = jax.random.randint(k2, (batch,), 0, 10)
  x_unl = jax.random.uniform(k3, (batch, *IMAGE), minval=-1.0, maxval=1.0)
  return (x_lab, labels), x_unl


def _changed(a, b) -> bool:
  return any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# -- schedule ----------------------------------------------------------------------------------

def test_margin_schedule_is_16_at_step_0_and_0_at_step_60000():
  trainer = semi_supervised.Trainer(mnist_ssl.get_config('ebgan_ln'))
  assert float(trainer.margin(0)) == 16.0       # App. D: m starts at 16 ...
  assert float(trainer.margin(30_000)) == 8.0   # 16 * (1 - 30000/60000), linear ...
  assert float(trainer.margin(60_000)) == 0.0   # ... 0 within the first 60,000 steps ...
  assert float(trainer.margin(150_000)) == 0.0  # ... and stays there.
  assert trainer.config.generator_off_step == 60_000  # G stops when m reaches 0.


def test_learning_rates_decay_linearly_to_zero_from_two_thirds():
  config = mnist_ssl.get_config('ebgan_ln,total_steps=300')
  assert (config.loss.margin_decay_steps, config.generator_off_step,
          config.optim.lr_decay_start) == (100, 100, 200)  # 60k/120k of 180k, scaled
  trainer = semi_supervised.Trainer(config)
  params = {'w': jnp.zeros(3)}
  grads = {'w': jnp.ones(3)}
  opt_state = trainer.d_tx.init(params)
  sizes = []
  for _ in range(300):
    updates, opt_state = trainer.d_tx.update(grads, opt_state, params)
    sizes.append(float(jnp.abs(updates['w'][0])))
  # Adam's step on a constant gradient is lr (bias-corrected m / sqrt(v) = 1), times the decay
  # factor 1 - (t - 200) / 100 after step 200: 0.0005 until then, 0.00025 half-way, 0 at 300.
  np.testing.assert_allclose(sizes[199], 0.0005, rtol=1e-3)
  np.testing.assert_allclose(sizes[250], 0.0005 * 0.5, rtol=1e-2)
  assert sizes[-1] < 1e-5
  ladder_cfg = mnist_ssl.get_config('ladder,total_steps=300')
  assert (ladder_cfg.optim.lr_decay_start, ladder_cfg.generator_off_step) == (200, 0)


# -- the step ----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ebgan_ln_two_steps():
  """EBGAN-LN with G switched off at step 1: (state0, state1, state2, metrics1, metrics2)."""
  config = _small_config('ebgan_ln', generator_off_step=1)
  trainer = semi_supervised.Trainer(config)
  step = jax.jit(trainer.train_step)
  state0 = trainer.create_state(jax.random.key(0))
  state1, m1 = step(state0, *_batches(1), jax.random.key(2))
  state2, m2 = step(state1, *_batches(3), jax.random.key(2))
  return state0, state1, state2, m1, m2


def test_generator_gets_no_update_after_the_switch_off_step(ebgan_ln_two_steps):
  state0, state1, state2, m1, m2 = ebgan_ln_two_steps
  # Step 0 < generator_off_step: both players move.
  assert float(m1['generator_on']) == 1.0
  assert _changed(state0.g.params, state1.g.params)
  assert _changed(state0.d.params, state1.d.params)
  # Step 1 >= generator_off_step: G, its BN statistics and its Adam state are untouched...
  assert float(m2['generator_on']) == 0.0
  chex.assert_trees_all_equal(state1.g, state2.g)
  # ... while D keeps training.
  assert _changed(state1.d.params, state2.d.params)
  assert int(state2.step) == 2


def test_d_loss_is_classification_plus_weighted_reconstruction_and_hinge(ebgan_ln_two_steps):
  *_, m1, m2 = ebgan_ln_two_steps
  # App. D: CE (weight 1) + lambda_L2 * E_real + hinge_weight * [m - E_fake]^+ (hinge_weight =
  # lambda_L2 by the config's choice); after the switch-off the hinge term is gone.
  lam = 1000.0 / 784.0
  np.testing.assert_allclose(float(m1['d_loss']),
                             float(m1['ce_loss']) + lam * (float(m1['energy_real'])
                                                           + float(m1['hinge'])), rtol=1e-5)
  np.testing.assert_allclose(float(m2['d_loss']),
                             float(m2['ce_loss']) + lam * float(m2['energy_real']), rtol=1e-5)
  assert float(m1['margin']) == 16.0
  # Eq. (2): G's loss is the mean energy of its samples, non-negative.
  assert float(m1['g_loss']) > 0.0


def test_ladder_step_has_no_generator():
  config = _small_config('ladder')
  trainer = semi_supervised.Trainer(config)
  state = trainer.create_state(jax.random.key(0))
  assert state.g is None
  new, m = jax.jit(trainer.train_step)(state, *_batches(1), jax.random.key(2))
  lam = 1000.0 / 784.0
  np.testing.assert_allclose(float(m['d_loss']),
                             float(m['ce_loss']) + lam * float(m['energy_real']), rtol=1e-5)
  assert 'g_loss' not in m and new.g is None


def test_train_step_on_two_devices_equals_one_device():
  assert jax.device_count() >= 2, 'conftest.py fakes 2 CPU devices'
  # SGD, not Adam: Adam's m / (sqrt(v) + eps) turns float rounding in near-zero gradients
  # (the combinators' a1 at initialisation) into differences of a sizeable fraction of lr;
  # with SGD (lr 0.1, so that the updates show) the updates are the scaled gradients.
  config = _small_config('ebgan_ln', **{'optim.optim_d': 'sgd', 'optim.optim_g': 'sgd',
                                        'optim.lr_d': 0.1, 'optim.lr_g': 0.1})
  trainer = semi_supervised.Trainer(config)
  labelled, unlabelled = _batches(1)
  results = []
  for n in (1, 2):
    mesh = sharding.make_mesh(n)
    state = jax.jit(trainer.create_state,
                    out_shardings=sharding.replicated(mesh))(jax.random.key(0))
    step = semi_supervised.jit_train_step(trainer, mesh)
    state, metrics = step(state, labelled, unlabelled, jax.random.key(2))
    results.append(jax.device_get((state, metrics)))
  chex.assert_trees_all_close(results[0], results[1], rtol=1e-4, atol=1e-6)


def test_evaluate_counts_clean_path_errors_with_a_padded_last_batch():
  config = _small_config('ladder')
  trainer = semi_supervised.Trainer(config)
  state = trainer.create_state(jax.random.key(0))
  (images, _), _ = _batches(4, batch=7)
  predicted = np.asarray(jax.jit(trainer.predict)(state.d.params, state.d.batch_stats, images))
  labels = predicted.copy()
  labels[[1, 5]] = (labels[[1, 5]] + 1) % 10  # two wrong of seven
  error = trainer.evaluate(state, np.asarray(images), labels, batch_size=3)  # 3 + 3 + 1(+2)
  np.testing.assert_allclose(error, 2 / 7)


# -- end to end --------------------------------------------------------------------------------

def _run(config, workdir: pathlib.Path):
  return semi_supervised.train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize('variant', ['ladder', 'ebgan_ln'])
def test_smoke_run_on_mock_mnist(tfds_data_dir, tmp_path, variant):
  config = _small_config(variant, tfds_data_dir, dataset='mnist', total_steps=3,
                         generator_off_step=2, **{'ssl.num_labelled': 20, 'batch_size': 8,
                                                  'ssl.labelled_batch_size': 8,
                                                  'ssl.eval_batch_size': 16})
  with tfds.testing.mock_data(num_examples=120):
    _, results = _run(config, tmp_path)
  assert results['steps'] == 3 and 0.0 <= results['test_error'] <= 1.0
  assert json.loads((tmp_path / 'results.json').read_text())['variant'] == variant
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['3']


def test_smoke_run_of_the_ladder_on_embedded_digits(tfds_data_dir, tmp_path):
  config = _small_config('ladder', tfds_data_dir, total_steps=2)
  state, results = _run(config, tmp_path)
  assert int(state.step) == 2 and results['num_test'] == 2000  # the embedded test split
  chex.assert_tree_all_finite(state.d.params)


def test_smoke_run_of_ebgan_ln_on_embedded_digits_resumes(tfds_data_dir, tmp_path):
  config = _small_config('ebgan_ln', tfds_data_dir, total_steps=2, generator_off_step=2,
                         checkpoint_every_steps=2, sample_every_steps=2)
  state, _ = _run(config, tmp_path)
  assert int(state.step) == 2
  assert (tmp_path / 'samples' / 'step_0000002.png').exists()  # G's sample grid
  config.total_steps = 3  # Resuming may lengthen the run (workdir.RESUMABLE_FIELDS).
  state, results = _run(config, tmp_path)
  assert int(state.step) == 3 and results['num_test'] == 2000
  chex.assert_tree_all_finite(state.d.params)


def test_table2_driver_writes_mean_and_std_beside_the_paper(tmp_path):
  for seed, error in enumerate([1.0, 3.0]):
    d = experiment.run_dir(tmp_path, 'ebgan_ln', 100, seed)
    d.mkdir(parents=True)
    (d / 'results.json').write_text(json.dumps({
        'variant': 'ebgan_ln', 'num_labelled': 100, 'seed': seed, 'test_error_percent': error,
        'steps': 9, 'dataset': 'mnist_10k', 'num_test': 2000, 'device': 'cpu'}))
  table = experiment.table_markdown(experiment.collect(tmp_path))
  assert '1.04±0.12' in table and '0.89±0.04' in table  # the paper's EBGAN-LN row
  # mean(1, 3) = 2, sample std = sqrt(((1-2)^2 + (3-2)^2) / 1) = 1.414
  assert '| EBGAN-LN, this code | 2.00±1.41 (2) | - | - |' in table


def test_table2_driver_runs_its_shard_of_the_seeds_and_skips_finished_runs(tmp_path,
                                                                          monkeypatch):
  calls = []

  def fake_train(config, workdir):
    calls.append((config.ssl.num_labelled, config.seed, config.ssl.labelled_seed))
    workdir.mkdir(parents=True)
    result = {'variant': config.variant, 'num_labelled': config.ssl.num_labelled,
              'seed': config.seed, 'test_error_percent': float(config.seed), 'steps': 1,
              'dataset': config.dataset, 'num_test': 1, 'device': 'cpu'}
    (workdir / 'results.json').write_text(json.dumps(result))
    return None, result

  monkeypatch.setattr(semi_supervised, 'train_and_evaluate', fake_train)
  config = mnist_ssl.get_config('ladder')
  experiment.drive(config, tmp_path, num_seeds=4, label_counts=[100, 1000], shard=(1, 2))
  # Seeds 1 and 3 (s % 2 == 1), run seed = labelled-subset seed.
  assert calls == [(100, 1, 1), (100, 3, 3), (1000, 1, 1), (1000, 3, 3)]
  assert '| Ladder (LN bottom-layer-cost), this code | 2.00±1.41 (2) | - | 2.00±1.41 (2) |' in (
      tmp_path / 'table2.md').read_text()
  experiment.drive(config, tmp_path, num_seeds=4, label_counts=[100], shard=(1, 2))
  assert len(calls) == 4  # finished runs are skipped
