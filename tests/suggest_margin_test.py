"""The margin advisor of App. E: fit D alone, read the real-energy distribution, suggest m.

The plateau rule and the percentiles are checked on energies known by construction: a D that
does not learn (SGD at lr 0) fed batches of chosen energies, and a D whose weights are all
zero, whose reconstruction is 0 so that D(x) = ||x||_2 (Eq. 13).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_grid
from ebgan_jax import data, models, suggest_margin


def _config(tfds_data_dir=''):
  config = mnist_grid.get_config('smoke')  # D: Dense(1024 -> 8) -> ReLU -> Dense(8 -> 1024).
  config.tfds_data_dir = tfds_data_dir
  return config


def _numpy_energies(variables, images):
  """||Dec(Enc(x)) - x||_2 of the smoke D (no BN, no dropout) in float64 numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables['params'])
  x = images.reshape(len(images), -1).astype(np.float64)
  h = np.maximum(x @ p['enc_dense_0']['kernel'] + p['enc_dense_0']['bias'], 0.0)
  rec = h @ p['dec_dense']['kernel'] + p['dec_dense']['bias']
  return np.linalg.norm(rec - x, axis=1)


def _zero_variables(config):
  d = models.get_discriminator(config)
  shapes = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)),
                                         train=False))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_suggest_range_rule_by_hand():
  # energies 1..100: p95 = 95.05 (numpy's linear interpolation: 1 + 0.95 * 99),
  # median = 50.5 -> high = max(4 * 50.5, 2 * 95.05) = max(202, 190.1) = 202.
  low, high = suggest_margin.suggest_range(np.arange(1, 101))
  assert low == pytest.approx(95.05)
  assert high == pytest.approx(202.0)
  # A tight distribution: all 5 -> low = 5, high = max(20, 10) = 20.
  assert suggest_margin.suggest_range(np.full(10, 5.0)) == (5.0, 20.0)


@pytest.fixture(scope='module')
def frozen():
  """The smoke config with SGD at lr 0 (D never changes) and two batches A and A / 2."""
  config = _config()
  config.optim.optim_d, config.optim.lr_d = 'sgd', 0.0
  a = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, 32, 32, 1))
  return config, a.astype(np.float32), (a / 2).astype(np.float32)


def test_plateau_rule_on_window_energies_known_by_construction(frozen):
  config, a, half = frozen
  window = 3
  # Windows: 3 x A, 3 x A/2, then A/2 for ever. D is fixed, so the window means are
  # [e(A), e(A/2), e(A/2)]: the 2nd improves by ~50% (no plateau), the 3rd by exactly 0,
  # which is below 1% of the 2nd: the fit stops after 9 steps.
  batches = iter([a] * window + [half] * 100)
  variables, windows, plateaued, steps = suggest_margin.fit_autoencoder(
      config, max_steps=100, window=window, tolerance=0.01, batches=batches)
  e_a, e_half = (float(np.mean(_numpy_energies(variables, x))) for x in (a, half))
  assert e_half < 0.6 * e_a  # D at init reconstructs almost nothing: e(A/2) ~ e(A) / 2.
  np.testing.assert_allclose(windows, [e_a, e_half, e_half], rtol=1e-5)
  assert plateaued and steps == 3 * window


def test_fit_stops_at_max_steps_in_a_partial_window_when_still_improving(frozen):
  config, a, half = frozen
  # Windows of 4: 4 x A, then max_steps = 6 leaves a last window of 2 x A/2 (improving).
  batches = iter([a] * 4 + [half] * 100)
  variables, windows, plateaued, steps = suggest_margin.fit_autoencoder(
      config, max_steps=6, window=4, tolerance=0.01, batches=batches)
  expected = [float(np.mean(_numpy_energies(variables, x))) for x in (a, half)]
  np.testing.assert_allclose(windows, expected, rtol=1e-5)
  assert not plateaued and steps == 6


def test_fit_autoencoder_learns_a_small_set_of_images():
  config = _config()
  rng = np.random.default_rng(0)
  # Eight fixed images, repeated: an auto-encoder can learn them, so the energy must drop.
  images = rng.uniform(-1, 1, size=(8, 32, 32, 1)).astype(np.float32)
  batches = (images[rng.integers(0, 8, size=config.batch_size)] for _ in range(10**6))
  _, windows, _, _ = suggest_margin.fit_autoencoder(
      config, max_steps=200, window=20, tolerance=0.01, batches=batches)
  assert windows[-1] < 0.8 * windows[0]


def test_gan_configs_are_refused():
  config = _config()
  config.loss.kind = 'gan'
  with pytest.raises(ValueError, match='EBGAN config'):
    suggest_margin.fit_autoencoder(config, max_steps=1)


def test_energies_of_a_zero_auto_encoder_are_the_image_norms():
  # Constant images c_i = i / 100, i = 1..100: ||x_i||_2 = sqrt(1024) c_i = 0.32 i. Chunks of
  # 30 (the last one of 10) must give the same numbers as one pass.
  values = np.arange(1, 101) / 100
  images = np.broadcast_to(values[:, None, None, None], (100, 32, 32, 1)).astype(np.float32)
  config = _config()
  energies = suggest_margin.real_energies(config, _zero_variables(config), images, batch_size=30)
  np.testing.assert_allclose(energies, 0.32 * np.arange(1, 101), rtol=1e-6)
  # By hand: p95 = 0.32 * 95.05, median 0.32 * 50.5 -> high = 4 * 16.16 = 64.64.
  low, high = suggest_margin.suggest_range(energies)
  assert low == pytest.approx(30.416) and high == pytest.approx(64.64)


def test_suggest_margin_reports_the_test_split_energies(tfds_data_dir, monkeypatch):
  """With a zero D, the advice is the distribution of ||x||_2 over the test digits."""
  config = _config(tfds_data_dir)
  fitted = (_zero_variables(config), [3.0, 2.0, 1.99], True, 60)
  monkeypatch.setattr(suggest_margin, 'fit_autoencoder', lambda *args, **kwargs: fitted)
  advice = suggest_margin.suggest_margin(config, max_eval_images=200)
  images, _ = data.split_arrays(config, 'test')
  norms = np.linalg.norm(images[:200].reshape(200, -1).astype(np.float64), axis=1)
  for p in suggest_margin.PERCENTILES:
    assert advice.percentiles[p] == pytest.approx(np.percentile(norms, p), rel=1e-5), p
  assert advice.mean == pytest.approx(norms.mean(), rel=1e-5)
  median, p95 = np.percentile(norms, [50, 95])
  assert advice.low == pytest.approx(p95, rel=1e-5)
  assert advice.high == pytest.approx(max(4 * median, 2 * p95), rel=1e-5)
  assert (advice.steps, advice.plateaued, advice.window_energies) == (60, True, [3.0, 2.0, 1.99])
  assert f'p95={p95:.3f}' in advice.report() and f'm in [{p95:.2f}, ' in advice.report()
