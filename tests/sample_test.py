"""`ebgan_jax.sample`: inference-mode sampling, spherical interpolation, PNG/.npz, the CLI.

Sampling in inference mode: G's BatchNorm uses its running statistics, never the batch's.
`Trainer.generate` and `sample.generate_images` are checked against G written out in numpy
(Dense -> BN with given running statistics -> ReLU, ..., Dense -> tanh; `models/mlp.py`), with
statistics far from BN's initial (0, 1), so that a G normalising by the batch differs.
"""

import os
import pathlib
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import mnist_fc
from ebgan_jax import sample, step, train

REPO = pathlib.Path(__file__).resolve().parents[1]
BN_EPSILON = 1e-5  # Torch's default, as models/mlp.py.


def _config(ema_decay=0.0):
  config = mnist_fc.get_config('ebgan_pt')
  config.model.n_layer_g, config.model.size_g, config.model.latent_dim = 3, 16, 8
  config.model.size_d = 8
  config.ema_decay = ema_decay
  return config


def _randomised(tree, seed, scale=1.0, positive=False):
  """A tree of the same shapes with random values (|N(0, 1)| + 0.5 if `positive`)."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  values = [rng.normal(size=x.shape) * scale for x in leaves]
  if positive:
    values = [np.abs(v) + 0.5 for v in values]
  return jax.tree.unflatten(treedef, [v.astype(np.float32) for v in values])


def _live_state(trainer, seed=0):
  """A state whose G params, EMA and running statistics are all different, and not BN's init."""
  state = trainer.create_state(jax.random.key(0))
  params = _randomised(state.g.params, seed, scale=0.3)
  stats = state.g.batch_stats
  stats = {layer: {'mean': _randomised(s['mean'], seed + 1),
                   'var': _randomised(s['var'], seed + 2, positive=True)}
           for layer, s in stats.items()}
  g_ema = None if state.g_ema is None else _randomised(state.g.params, seed + 3, scale=0.3)
  return state.replace(g=state.g.replace(params=params, batch_stats=stats), g_ema=g_ema)


def _numpy_generator(params, stats, z):
  """MLPGenerator in inference mode, float64: hidden Dense (no bias) -> BN -> ReLU; tanh out."""
  h = np.asarray(z, np.float64)
  for i in range(len(stats)):
    h = h @ np.asarray(params[f'dense_{i}']['kernel'], np.float64)
    bn, s = params[f'bn_{i}'], stats[f'bn_{i}']
    h = (h - s['mean']) / np.sqrt(np.asarray(s['var'], np.float64) + BN_EPSILON)
    h = np.maximum(h * bn['scale'] + bn['bias'], 0.0)
  out = np.tanh(h @ np.asarray(params['output']['kernel'], np.float64) + params['output']['bias'])
  return out.reshape(len(z), 32, 32, 1)


def test_generate_uses_running_statistics_and_ignores_batch_mates():
  trainer = step.Trainer(_config())
  state = _live_state(trainer)
  assert len(state.g.batch_stats) == 2  # n_layer_g = 3: two hidden layers with BN.
  z = np.random.default_rng(5).normal(size=(6, 8)).astype(np.float32)
  generate = jax.jit(trainer.generate)
  images = np.asarray(generate(state.g.params, state.g.batch_stats, z))
  np.testing.assert_allclose(images, _numpy_generator(state.g.params, state.g.batch_stats, z),
                             atol=2e-5)
  # Each image is a function of its own z: alone, in another order, among other batch-mates
  # (to round-off: the matmuls of another batch size sum in another order).
  np.testing.assert_allclose(
      np.asarray(generate(state.g.params, state.g.batch_stats, z[2:3]))[0], images[2],
      atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(generate(state.g.params, state.g.batch_stats, z[::-1])), images[::-1],
      atol=1e-6)
  others = np.concatenate([z[:1], np.random.default_rng(6).normal(size=(3, 8))]).astype(
      np.float32)
  np.testing.assert_allclose(
      np.asarray(generate(state.g.params, state.g.batch_stats, others))[0], images[0], atol=1e-6)
  # The check can fail: normalising by this batch's statistics (train mode) is another image.
  train_mode = trainer.generator.apply(
      {'params': state.g.params, 'batch_stats': state.g.batch_stats}, z, train=True,
      mutable=['batch_stats'])[0]
  assert np.max(np.abs(np.asarray(train_mode) - images)) > 0.1


def test_generate_images_draws_its_latents_per_chunk_in_inference_mode():
  trainer = step.Trainer(_config())
  state = _live_state(trainer, seed=10)
  key = jax.random.key(3)
  images = sample.generate_images(trainer, state, num=5, key=key, batch_size=3)
  chex.assert_shape(images, (5, 32, 32, 1))
  assert images.dtype == np.uint8
  # Chunk i of at most 3 images draws z from split(fold_in(key, i))[0] (sample.py).
  expected = []
  for i, n in enumerate((3, 2)):
    z_key, _ = jax.random.split(jax.random.fold_in(key, i))
    z = np.asarray(jax.random.normal(z_key, (n, 8), jnp.float32))
    expected.append(_numpy_generator(state.g.params, state.g.batch_stats, z))
  expected = np.clip(np.round((np.concatenate(expected) + 1.0) * 127.5), 0, 255)
  # uint8 rounding: a float32 pixel within 2e-5 of a .5 boundary may round the other way.
  assert np.max(np.abs(images.astype(np.int64) - expected)) <= 1
  assert np.mean(images.astype(np.int64) != expected) < 0.01


def test_ema_samples_combine_the_ema_params_with_the_live_running_statistics():
  """With the EMA on, samples are G(z) with the EMA of the params and the running statistics
  the live G accumulated (the EMA keeps no statistics of its own: `Trainer.sample_params`)."""
  trainer = step.Trainer(_config(ema_decay=0.99))
  state = _live_state(trainer, seed=20)
  z = np.random.default_rng(7).normal(size=(4, 8)).astype(np.float32)
  params = trainer.sample_params(state)
  images = np.asarray(jax.jit(trainer.generate)(params, state.g.batch_stats, z))
  np.testing.assert_allclose(images, _numpy_generator(state.g_ema, state.g.batch_stats, z),
                             atol=2e-5)
  # Neither the live params nor BN's initial statistics (0, 1) give these images.
  live = _numpy_generator(state.g.params, state.g.batch_stats, z)
  fresh = jax.tree.map(np.asarray, trainer.create_state(jax.random.key(0)).g.batch_stats)
  assert np.max(np.abs(live - images)) > 0.1
  assert np.max(np.abs(_numpy_generator(state.g_ema, fresh, z) - images)) > 0.1
  # sample.generate_images takes the same params and statistics.
  via_sample = sample.generate_images(trainer, state, num=4, key=jax.random.key(1))
  z_key, _ = jax.random.split(jax.random.fold_in(jax.random.key(1), 0))
  z = np.asarray(jax.random.normal(z_key, (4, 8), jnp.float32))
  expected = np.round((_numpy_generator(state.g_ema, state.g.batch_stats, z) + 1.0) * 127.5)
  assert np.max(np.abs(via_sample.astype(np.int64) - expected)) <= 1


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
@pytest.mark.usefixtures('fast_compiles')
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
