"""Tests of ebgan_jax/semi_supervised.py and experiments/semi_supervised.py (Sec. 4.2, App. D).

The Ladder's own tests (shapes, gamma-free BN, shared weights) are in ladder_test.py and the
labelled subsets' in data_ssl_test.py. Most tests here shrink the networks (a 64-32-10 Ladder,
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
from ebgan_jax import data, semi_supervised, sharding, ssl_population, ssl_train
from experiments import semi_supervised as experiment
from experiments import ssl_benchmark

SMALL_WIDTHS = (64, 32, 10)
IMAGE = (28, 28, 1)
BN_EPS = 1e-5  # mlp.BN_EPSILON, Torch's
LAMBDA_L2 = 1000.0 / 784.0  # App. D


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


# -- an independent numpy Ladder and G ---------------------------------------------------------
# Written from Rasmus et al.'s Algorithm 1 and App. D, in float64, noise-free (model.noise_std
# = 0, so the corrupted encoder is the clean one computed with its own batch statistics).

def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _np_normalize(a):
  """(a - batch mean) / sqrt(biased batch variance + 1e-5), per unit."""
  return (a - a.mean(0)) / np.sqrt(a.var(0) + BN_EPS)


def _np_sigmoid(a):
  return 1.0 / (1.0 + np.exp(-a))


def _np_ladder(params, x):
  """Train-mode (logits, x_rec) of the noise-free Ladder on pixels x [B, D]."""
  p = _np(params)
  top = sum(name.startswith('enc_dense_') for name in p)
  h, z = x, [x]  # z(0) = x
  for l in range(1, top + 1):
    z.append(_np_normalize(h @ p[f'enc_dense_{l}']['kernel']))  # z(l), before beta
    pre = z[l] + p[f'enc_bn_{l}']['bias']
    h = pre if l == top else np.maximum(pre, 0.0)
  logits = h
  soft = np.exp(logits - logits.max(1, keepdims=True))
  u = _np_normalize(soft / soft.sum(1, keepdims=True))  # u(L)
  for l in range(top, -1, -1):
    if l < top:
      u = _np_normalize(z_hat @ p[f'dec_dense_{l}']['kernel'])  # u(l) = NB(V z^(l+1))
    a = {i: p[f'combinator_{l}'][f'a{i}'] for i in range(1, 11)}
    mu = a[1] * _np_sigmoid(a[2] * u + a[3]) + a[4] * u + a[5]
    v = a[6] * _np_sigmoid(a[7] * u + a[8]) + a[9] * u + a[10]
    z_hat = (z[l] - mu) * v + mu
  return logits, z_hat


def _np_clean_predictions(params, batch_stats, x):
  """Test-time classes of the clean path (running statistics, no noise) on pixels x [N, D]."""
  p, s = _np(params), _np(batch_stats)
  top = sum(name.startswith('enc_dense_') for name in p)
  h = x
  for l in range(1, top + 1):
    pre = ((h @ p[f'enc_dense_{l}']['kernel'] - s[f'enc_bn_{l}']['mean'])
           / np.sqrt(s[f'enc_bn_{l}']['var'] + BN_EPS) + p[f'enc_bn_{l}']['bias'])
    h = pre if l == top else np.maximum(pre, 0.0)
  return h.argmax(1)


def _np_generator(params, z):
  """G(z) in train mode: (Dense -> BN(batch statistics) -> ReLU) x n, Dense -> tanh."""
  p = _np(params)
  h, i = z, 0
  while f'dense_{i}' in p:
    pre = _np_normalize(h @ p[f'dense_{i}']['kernel'])
    h = np.maximum(pre * p[f'bn_{i}']['scale'] + p[f'bn_{i}']['bias'], 0.0)
    i += 1
  return np.tanh(h @ p['output']['kernel'] + p['output']['bias'])


def _np_pixels(images):
  """[-1, 1] images [B, H, W, C] -> the Ladder's [0, 1] pixels, flat [B, D]."""
  x = np.asarray(images, np.float64)
  return (x.reshape(x.shape[0], -1) + 1.0) / 2.0


def _np_cross_entropy(logits, labels):
  top = logits.max(1)
  log_z = top + np.log(np.exp(logits - top[:, None]).sum(1))
  return np.mean(log_z - logits[np.arange(len(labels)), labels])


def _np_energy(x, x_rec):
  return ((x_rec - x) ** 2).sum(1)  # App. D's vanilla squared L2, per sample


def _randomized_ladder(params, seed):
  """`params` with every beta and combinator a_i drawn at random, so that each matters (at
  initialisation v = mu = 0 and x_rec = 0 whatever the network computes)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, layer in params.items():
    if name.startswith(('combinator_', 'enc_bn_')):
      layer = {k: jnp.asarray(rng.normal(0.0, 0.5, v.shape), jnp.float32) + v
               for k, v in layer.items()}
    out[name] = layer
  return out


# -- schedule ----------------------------------------------------------------------------------

def test_margin_schedule_is_16_at_step_0_and_0_at_step_60000():
  trainer = semi_supervised.Trainer(mnist_ssl.get_config('ebgan_ln'))
  assert float(trainer.margin(0)) == 16.0       # App. D: m starts at 16 ...
  assert float(trainer.margin(30_000)) == 8.0   # 16 * (1 - 30000/60000), linear ...
  assert float(trainer.margin(60_000)) == 0.0   # ... 0 within the first 60,000 steps ...
  assert float(trainer.margin(150_000)) == 0.0  # ... and stays there.


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
  """EBGAN-LN with G switched off at step 1, noise-free, random betas and combinators, and a
  known z: (trainer, states 0..2, metrics of steps 1 and 2, the batches, z)."""
  config = _small_config('ebgan_ln', generator_off_step=1, **{'model.noise_std': 0.0})
  trainer = semi_supervised.Trainer(config)
  state0 = trainer.create_state(jax.random.key(0))
  state0 = state0.replace(d=state0.d.replace(params=_randomized_ladder(state0.d.params, 0)))
  z = np.random.default_rng(1).normal(size=(8, config.model.latent_dim)).astype(np.float32)
  trainer.sample_latents = lambda key, num: jnp.asarray(z[:num])  # G's input, known here
  # m between the smallest and the largest energy of G(z) (numpy, below), so that the hinge
  # is active for some samples only.
  e_fake = _np_energy(x := _np_pixels(_np_generator(state0.g.params, z)),
                      _np_ladder(state0.d.params, x)[1])
  config.loss.margin = float(np.median(e_fake))
  step = jax.jit(trainer.train_step)
  batches = (_batches(1), _batches(3))
  state1, m1 = step(state0, *batches[0], jax.random.key(2))
  state2, m2 = step(state1, *batches[1], jax.random.key(2))
  return trainer, (state0, state1, state2), (m1, m2), batches, z


def test_generator_gets_no_update_after_the_switch_off_step(ebgan_ln_two_steps):
  _, (state0, state1, state2), (m1, m2), *_ = ebgan_ln_two_steps
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


def test_ebgan_ln_losses_match_a_numpy_step(ebgan_ln_two_steps):
  trainer, (state0, state1, _), (m1, m2), batches, z = ebgan_ln_two_steps
  ((x_lab, labels), x_unl), ((x_lab2, labels2), x_unl2) = batches
  labels, labels2 = np.asarray(labels), np.asarray(labels2)
  margin = trainer.config.loss.margin
  # Step 0, G on. Each batch is normalized with its own statistics: three separate passes.
  logits = _np_ladder(state0.d.params, _np_pixels(x_lab))[0]
  x = _np_pixels(x_unl)
  e_real = _np_energy(x, _np_ladder(state0.d.params, x)[1])
  x_fake = _np_pixels(_np_generator(state0.g.params, z))
  e_fake = _np_energy(x_fake, _np_ladder(state0.d.params, x_fake)[1])
  hinge = np.mean(np.maximum(margin - e_fake, 0.0))
  assert 0 < np.sum(e_fake < margin) < len(e_fake)  # the hinge is active for some samples
  # App. D: CE (weight 1) + lambda_L2 * E_real + hinge_weight * [m - E_fake]^+, hinge_weight =
  # lambda_L2 (the config's choice).
  np.testing.assert_allclose(float(m1['d_loss']), _np_cross_entropy(logits, labels)
                             + LAMBDA_L2 * (e_real.mean() + hinge), rtol=1e-4)
  np.testing.assert_allclose(float(m1['hinge']), hinge, rtol=1e-4)
  np.testing.assert_allclose(float(m1['energy_fake']), e_fake.mean(), rtol=1e-4)
  np.testing.assert_allclose(float(m1['train_error']), np.mean(logits.argmax(1) != labels))
  # Eq. (2): G's loss is the mean energy of the same G(z) under the *updated* D.
  g_loss = _np_energy(x_fake, _np_ladder(state1.d.params, x_fake)[1]).mean()
  assert abs(g_loss - e_fake.mean()) > 1e-3 * g_loss  # the update of D shows
  np.testing.assert_allclose(float(m1['g_loss']), g_loss, rtol=1e-4)
  # Step 1, G off: the hinge term is gone, D's loss is the Ladder's.
  logits2 = _np_ladder(state1.d.params, _np_pixels(x_lab2))[0]
  x2 = _np_pixels(x_unl2)
  e_real2 = _np_energy(x2, _np_ladder(state1.d.params, x2)[1])
  np.testing.assert_allclose(float(m2['d_loss']), _np_cross_entropy(logits2, labels2)
                             + LAMBDA_L2 * e_real2.mean(), rtol=1e-4)
  assert float(m2['hinge']) == 0.0 and float(m2['g_loss']) == 0.0


def test_ladder_step_matches_a_numpy_step_and_has_no_generator():
  config = _small_config('ladder', **{'model.noise_std': 0.0})
  trainer = semi_supervised.Trainer(config)
  state = trainer.create_state(jax.random.key(0))
  state = state.replace(d=state.d.replace(params=_randomized_ladder(state.d.params, 1)))
  assert state.g is None
  (x_lab, labels), x_unl = _batches(1)
  new, m = jax.jit(trainer.train_step)(state, (x_lab, labels), x_unl, jax.random.key(2))
  logits = _np_ladder(state.d.params, _np_pixels(x_lab))[0]
  x = _np_pixels(x_unl)
  e_real = _np_energy(x, _np_ladder(state.d.params, x)[1])
  np.testing.assert_allclose(float(m['d_loss']), _np_cross_entropy(logits, np.asarray(labels))
                             + LAMBDA_L2 * e_real.mean(), rtol=1e-4)
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


def _dot_precisions(lowered) -> set[str]:
  """The `precision = [...]` attribute of every dot_general in a lowered step's StableHLO."""
  lines = [l for l in lowered.as_text().splitlines() if 'stablehlo.dot_general' in l]
  assert lines, 'the step has no matmuls'
  return {l.split('precision = [', 1)[1].split(']', 1)[0] if 'precision = [' in l else ''
          for l in lines}


# As tests/step_test.py: JAX's 'tensorfloat32' is Precision.HIGH, 'float32' HIGHEST; with no
# setting ('default') the dots are lowered with DEFAULT.
@pytest.mark.parametrize('value,expected', [('default', {'DEFAULT, DEFAULT'}),
                                            ('float32', {'HIGHEST, HIGHEST'}),
                                            ('tensorfloat32', {'HIGH, HIGH'})])
def test_matmul_precision_reaches_every_dot_of_both_branches_of_the_step(value, expected):
  config = _small_config('ebgan_ln', matmul_precision=value)
  trainer = semi_supervised.Trainer(config)
  key = jax.random.key(0)
  state = jax.eval_shape(trainer.create_state, key)
  labelled = (jax.ShapeDtypeStruct((8, *IMAGE), jnp.float32),
              jax.ShapeDtypeStruct((8,), jnp.int32))
  unlabelled = jax.ShapeDtypeStruct((8, *IMAGE), jnp.float32)
  lowered = semi_supervised.jit_train_step(trainer, sharding.make_mesh(1)).lower(
      state, labelled, unlabelled, key)  # G on and G off: both branches of the lax.cond
  assert _dot_precisions(lowered) == expected
  assert jax.config.jax_default_matmul_precision is None  # scoped to the step's trace
  with pytest.raises(ValueError, match="'fp8'.*tensorfloat32"):
    semi_supervised.Trainer(_small_config('ladder', matmul_precision='fp8'))


def test_compiled_step_updates_the_weights_in_place():
  # The clean pass reads the old weights outside the backward pass; unless the donated
  # weights' update is ordered after it too (step.apply_optimizer's `after`), XLA:CPU copies
  # every encoder kernel first (an extra pass over memory per weight, every step).
  trainer = semi_supervised.Trainer(_small_config('ladder'))
  mesh = sharding.make_mesh(1)
  jax.config.update('jax_disable_most_optimizations', False)  # Copy removal is an optimization.
  try:
    state = jax.jit(trainer.create_state)(jax.random.key(0))
    hlo = semi_supervised.jit_train_step(trainer, mesh).lower(
        state, *_batches(1), jax.random.key(2)).compile().as_text()
  finally:
    jax.config.update('jax_disable_most_optimizations', True)
  kernels = {'f32[%d,%d]' % p.shape for p in jax.tree.leaves(state) if p.ndim == 2}
  copies = [l for l in hlo.splitlines() if ' copy(%state' in l
            and any(l.split('=')[1].strip().startswith(k) for k in kernels)]
  assert not copies, 'weights copied before their update:\n' + '\n'.join(copies)


def test_scanned_steps_equal_one_step_per_call_across_the_generator_switch_off():
  # Two steps in one lax.scan (G on, then off at step 1) against two calls of one step. SGD:
  # Adam would turn float rounding in near-zero gradients into sizeable differences.
  config = _small_config('ebgan_ln', generator_off_step=1, **{
      'optim.optim_d': 'sgd', 'optim.optim_g': 'sgd', 'optim.lr_d': 0.1, 'optim.lr_g': 0.1})
  trainer = semi_supervised.Trainer(config)
  mesh = sharding.make_mesh(1)
  batches = [_batches(1), _batches(3)]
  key = jax.random.key(2)
  state = jax.jit(trainer.create_state)(jax.random.key(0))
  one = semi_supervised.jit_train_step(trainer, mesh)
  singles = []
  for labelled, unlabelled in batches:
    state, metrics = one(state, labelled, unlabelled, key)
    singles.append(metrics)
  expected = jax.device_get((state, jax.tree.map(lambda *m: jnp.stack(m), *singles)))
  stacked = jax.tree.map(lambda *b: jnp.stack(b), *batches)
  state = jax.jit(trainer.create_state)(jax.random.key(0))
  got = jax.device_get(semi_supervised.jit_train_steps(trainer, mesh)(state, *stacked, key))
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[1]['generator_on'], [1.0, 0.0])


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
  return ssl_train.train_and_evaluate(config, str(workdir))


def _assert_clean_path_error(state, test_images, test_labels, results):
  """results' test error is the numpy clean path's on the test split (to one flipped tie:
  float32 against float64 may break a near-tie of two logits the other way)."""
  predicted = _np_clean_predictions(state.d.params, state.d.batch_stats,
                                    _np_pixels(test_images))
  expected = np.mean(predicted != np.asarray(test_labels))
  assert abs(results['test_error'] - expected) <= 1.0 / len(test_labels)
  np.testing.assert_allclose(results['test_error_percent'], 100 * results['test_error'])


# One run per data path: tfds (mock MNIST) with the Ladder here, the embedded digits in memory
# with EBGAN-LN below (the data path does not depend on the variant).
@pytest.mark.parametrize('variant', ['ladder'])
def test_smoke_run_on_mock_mnist(tfds_data_dir, tmp_path, variant):
  config = _small_config(variant, tfds_data_dir, dataset='mnist', total_steps=3,
                         generator_off_step=2, **{'ssl.num_labelled': 20, 'batch_size': 8,
                                                  'ssl.labelled_batch_size': 8,
                                                  'ssl.eval_batch_size': 16})
  with tfds.testing.mock_data(num_examples=120):
    state, results = _run(config, tmp_path)
    test_images, test_labels = data.split_arrays(config, 'test')
  assert results['steps'] == 3
  _assert_clean_path_error(state, test_images, test_labels, results)
  assert json.loads((tmp_path / 'results.json').read_text())['variant'] == variant
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['3']


def test_smoke_run_of_ebgan_ln_on_embedded_digits_resumes(tfds_data_dir, tmp_path):
  config = _small_config('ebgan_ln', tfds_data_dir, total_steps=2, generator_off_step=2,
                         checkpoint_every_steps=2, sample_every_steps=2, steps_per_call=2)
  state, _ = _run(config, tmp_path)  # one scanned call of two steps
  assert int(state.step) == 2
  assert (tmp_path / 'samples' / 'step_0000002.png').exists()  # G's sample grid
  config.total_steps = 3  # Resuming may lengthen the run (workdir.RESUMABLE_FIELDS).
  state, results = _run(config, tmp_path)  # one call of one step
  assert int(state.step) == 3 and results['num_test'] == 2000  # the embedded test split
  chex.assert_tree_all_finite(state.d.params)
  _assert_clean_path_error(state, *data.split_arrays(config, 'test'), results)


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

  monkeypatch.setattr(ssl_train, 'train_and_evaluate', fake_train)
  config = mnist_ssl.get_config('ladder')
  experiment.drive(config, tmp_path, num_seeds=4, label_counts=[100, 1000], shard=(1, 2))
  # Seeds 1 and 3 (s % 2 == 1), run seed = labelled-subset seed.
  assert calls == [(100, 1, 1), (100, 3, 3), (1000, 1, 1), (1000, 3, 3)]
  assert '| Ladder (LN bottom-layer-cost), this code | 2.00±1.41 (2) | - | 2.00±1.41 (2) |' in (
      tmp_path / 'table2.md').read_text()
  experiment.drive(config, tmp_path, num_seeds=4, label_counts=[100], shard=(1, 2))
  assert len(calls) == 4  # finished runs are skipped


def _write_result(table_dir, variant, n, seed, error):
  d = experiment.run_dir(table_dir, variant, n, seed)
  d.mkdir(parents=True, exist_ok=True)
  (d / 'results.json').write_text(json.dumps({
      'variant': variant, 'num_labelled': n, 'seed': seed, 'test_error_percent': error,
      'steps': 9, 'dataset': 'mnist_10k', 'num_test': 2000, 'device': 'cpu'}))


def test_table2_reports_paired_differences_by_seed_with_a_t_interval(tmp_path):
  for seed, (ln, lad) in enumerate([(1.0, 2.0), (2.0, 2.5), (4.0, 4.5)]):
    _write_result(tmp_path, 'ebgan_ln', 100, seed, ln)
    _write_result(tmp_path, 'ladder', 100, seed, lad)
  _write_result(tmp_path, 'ladder', 100, 3, 9.0)  # no EBGAN-LN partner: not paired
  table = experiment.table_markdown(experiment.collect(tmp_path))
  # Differences -1, -0.5, -0.5: mean -2/3; sample sd sqrt((1/9 + 2/36) / 2) = 0.2887, sem
  # 0.1667; t(0.975, 2) = 4.3027: half-width 0.7171, so [-1.384, +0.050].
  assert '| EBGAN-LN − Ladder (LN bottom-layer-cost) | -0.67 [-1.38, +0.05] (3) | - | - |' in table
  assert 'control' not in table.split('paired difference')[1].split('Per-seed')[0]
  assert '1.36±0.21' in table and '0.89±0.04' in table  # the paper's rows


def test_table2_driver_trains_populations_of_runs_at_the_same_step(tmp_path, monkeypatch):
  calls = []

  def fake_population(configs, workdirs, strategy, splits, deadline):
    calls.append(([(c.ssl.num_labelled, c.seed) for c in configs], strategy, splits))
    for c, w in zip(configs, workdirs):
      _write_result(w.parents[1], c.variant, c.ssl.num_labelled, c.seed, float(c.seed))
    return [{'test_error': 0.0} for _ in configs]

  monkeypatch.setattr(ssl_population, 'train_population', fake_population)
  monkeypatch.setattr(ssl_train, 'load_splits', lambda config: 'the splits')
  resumed = {(100, 1)}  # this run has a checkpoint at step 5
  monkeypatch.setattr(ssl_population, 'resume_step', lambda w: 5 if (
      int(w.parent.name[1:]), int(w.name[4:])) in resumed else 0)
  _write_result(tmp_path, 'control', 200, 0, 1.0)  # finished: skipped
  config = mnist_ssl.get_config('control')
  experiment.drive(config, tmp_path, num_seeds=3, label_counts=[100, 200],
                   population_size=3, strategy='unroll')
  # The run at step 5 alone first; the other four from step 0 in populations of <= 3.
  assert calls == [([(100, 1)], 'unroll', 'the splits'),
                   ([(100, 0), (100, 2), (200, 1)], 'unroll', 'the splits'),
                   ([(200, 2)], 'unroll', 'the splits')]
  assert (tmp_path / 'table2.md').exists()
  assert "control: Ladder at EBGAN-LN's D lr 0.0005" in (tmp_path / 'table2.md').read_text()


def test_step_flops_are_the_hand_counted_matrix_products():
  # experiments/benchmark.py's FLOP column for the App. D networks, by hand. Multiply-adds per
  # image of one pass: encoder E = 784*1000 + 1000*500 + 500*250 + 2*250*250 + 250*10 =
  # 1,536,500, the decoder the same. Per (labelled, unlabelled) pair of the Ladder step:
  # labelled clean and corrupted forward (2E) and the corrupted backward (weight gradients E,
  # input gradients E - 784,000: none for the pixels); unlabelled clean, corrupted and decoder
  # forward (3E) and the backward of the last two (4E - 784,000): 11E - 1,568,000.
  e = 1_536_500
  ladder = 11 * e - 1_568_000
  # EBGAN-LN with G on adds per generated image (G = 100*800 + 3*800*800 + 800*784 =
  # 2,627,200): G's forward (G); D's update on it, corrupted and decoder forward and backward
  # (6E - 784,000); G's update: D forward again (2E) and input gradients down to the pixels
  # (2E), G's backward (2G - 80,000).
  g = 2_627_200
  ebgan_ln = ladder + 3 * g + 10 * e - 864_000
  for variant, macs in (('ladder', ladder), ('ebgan_ln', ebgan_ln)):
    flops = {}
    for b in (8, 16):
      config = mnist_ssl.get_config(variant)
      config.batch_size = config.ssl.labelled_batch_size = b
      trainer = semi_supervised.Trainer(config)
      flops[b] = ssl_benchmark.step_flops(trainer, config, generator_on=variant == 'ebgan_ln')
    slope = (flops[16] - flops[8]) / 8  # per (labelled, unlabelled[, generated]) image
    assert 2 * macs <= slope <= 1.04 * 2 * macs, (variant, slope / (2 * macs))
