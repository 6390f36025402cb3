"""The margin advisor of App. E: fit D alone, read the real-energy distribution, suggest m."""

import numpy as np
import pytest

from configs import mnist_grid
from ebgan_jax import suggest_margin


def _config(tfds_data_dir=''):
  config = mnist_grid.get_config('smoke')
  config.tfds_data_dir = tfds_data_dir
  return config


def test_suggest_range_rule_by_hand():
  # energies 1..100: p95 = 95.05 (numpy's linear interpolation: 1 + 0.95 * 99),
  # median = 50.5 -> high = max(4 * 50.5, 2 * 95.05) = max(202, 190.1) = 202.
  low, high = suggest_margin.suggest_range(np.arange(1, 101))
  assert low == pytest.approx(95.05)
  assert high == pytest.approx(202.0)
  # A tight distribution: all 5 -> low = 5, high = max(20, 10) = 20.
  assert suggest_margin.suggest_range(np.full(10, 5.0)) == (5.0, 20.0)


def test_fit_autoencoder_lowers_the_energy_until_it_plateaus():
  config = _config()
  rng = np.random.default_rng(0)
  # Eight fixed images, repeated: an auto-encoder can learn them, so the energy must drop.
  images = rng.uniform(-1, 1, size=(8, 32, 32, 1)).astype(np.float32)
  batches = (images[rng.integers(0, 8, size=config.batch_size)] for _ in range(10**6))
  _, windows, plateaued, steps = suggest_margin.fit_autoencoder(
      config, max_steps=400, window=20, tolerance=0.01, batches=batches)
  assert windows[-1] < 0.8 * windows[0]
  assert steps == 20 * len(windows) and steps <= 400
  assert plateaued or steps == 400


def test_gan_configs_are_refused():
  config = _config()
  config.loss.kind = 'gan'
  with pytest.raises(ValueError, match='EBGAN config'):
    suggest_margin.fit_autoencoder(config, max_steps=1)


def test_suggest_margin_on_the_embedded_digits(tfds_data_dir):
  advice = suggest_margin.suggest_margin(_config(tfds_data_dir), max_steps=20, window=10,
                                         max_eval_images=200)
  values = [advice.percentiles[p] for p in suggest_margin.PERCENTILES]
  assert values == sorted(values) and values[0] > 0
  assert advice.low == pytest.approx(advice.percentiles[95])
  assert advice.high >= advice.low
  report = advice.report()
  assert 'Suggested margin range' in report and 'p95=' in report
