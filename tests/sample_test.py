"""`ebgan_jax.sample`: spherical interpolation by hand, PNG and .npz outputs, the CLI."""

import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import mnist_fc
from ebgan_jax import sample, train

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('fast_compiles_module')


def test_slerp_by_hand():
  """Orthogonal unit vectors e1, e2: slerp at t is cos(t pi/2) e1 + sin(t pi/2) e2."""
  e1, e2 = jnp.array([1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 0.0])
  path = np.asarray(sample.slerp(e1, e2, 3))
  np.testing.assert_allclose(path, [[1, 0, 0], [np.sqrt(0.5), np.sqrt(0.5), 0], [0, 1, 0]],
                             atol=1e-6)
  # Equal directions: the straight line (no division by sin 0).
  np.testing.assert_allclose(np.asarray(sample.slerp(e1, 2 * e1, 3)),
                             [[1, 0, 0], [1.5, 0, 0], [2, 0, 0]], atol=1e-6)
  # The norm stays that of the endpoints when they share it; a straight line would dip.
  z0, z1 = jnp.array([3.0, 4.0, 0.0]), jnp.array([0.0, -4.0, 3.0])
  norms = np.linalg.norm(np.asarray(sample.slerp(z0, z1, 7)), axis=1)
  np.testing.assert_allclose(norms, 5.0, rtol=1e-5)


def test_write_images_by_extension(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 1), np.uint8)
  sample.write_images(tmp_path / 'a.png', images, num_cols=3)
  grid = np.asarray(Image.open(tmp_path / 'a.png'))
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)  # 2 rows x 3 columns of 4 px, 1 px padding
  np.testing.assert_array_equal(grid[1:5, 1:5], images[0, ..., 0])
  np.testing.assert_array_equal(grid[6:10, 11:15], images[5, ..., 0])
  sample.write_images(tmp_path / 'a.npz', images)
  with np.load(tmp_path / 'a.npz') as data:
    np.testing.assert_array_equal(data['images'], images)
  with pytest.raises(ValueError, match='.png'):
    sample.write_images(tmp_path / 'a.jpg', images)


@pytest.mark.slow
def test_the_cli_writes_a_grid_and_an_interpolation(tmp_path, tfds_data_dir):
  config = mnist_fc.get_config('ebgan')
  config.model.size_g = config.model.size_d = 32
  config.model.n_layer_g, config.batch_size, config.total_steps = 2, 8, 2
  config.eval_every_steps = 0
  train.train_and_evaluate(config, tmp_path / 'run')
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'TF_CPP_MIN_LOG_LEVEL': '2',
         'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true'}
  cmd = [sys.executable, '-m', 'ebgan_jax.sample', f'--workdir={tmp_path / "run"}']
  for extra in (['--num_samples=9', f'--out={tmp_path / "grid.png"}'],
                ['--interpolate', '--num_samples=3', '--interpolation_steps=5',
                 f'--out={tmp_path / "walk.npz"}']):
    result = subprocess.run(cmd + extra, env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
  assert np.asarray(Image.open(tmp_path / 'grid.png')).shape == (3 * 33 + 1, 3 * 33 + 1)
  with np.load(tmp_path / 'walk.npz') as data:
    walk = data['images']
  assert walk.shape == (3, 5, 32, 32, 1) and walk.dtype == np.uint8
  assert not np.array_equal(walk[:, 0], walk[:, -1])  # each row goes somewhere
