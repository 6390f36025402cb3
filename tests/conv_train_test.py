"""Training the deep convolutional configs (Sec. 4.3, 4.4) on mock data, and their speed/scale
options: data parallelism on 2 faked CPU devices, bf16 compute, generator EMA.

Every config runs a `tiny` variant (tiny widths, batch 4) for a few steps on mock batches from
the input pipeline: celeba through `train.train_and_evaluate` (checkpoints, EMA samples), the
others through the jitted step, with zeroed output layers so that D's metrics are known by
construction. The LSUN-patches run (fp32, one device, SGD) is the reference that the 2-device
run, the bf16 run and the EMA hand check are compared with; they start from the same initial
state (compiles are the cost of these tests on CPU).
"""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ebgan_jax import checkpoint, inception, sharding, step, train
from ebgan_jax.data import tfds_pipeline as input_pipeline

MOCK_EXAMPLES = 8


pytestmark = pytest.mark.usefixtures('fast_compiles_module')


def _load(name, arg, tfds_data_dir=''):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  config.tfds_data_dir = tfds_data_dir
  return config


@pytest.mark.parametrize('name,arg,margin', [
    ('celeba', 'ebgan', 20.0), ('lsun_bedroom', 'ebgan', 80.0),
    ('imagenet128', 'ebgan', 40.0), ('imagenet256', 'ebgan', 80.0)])
def test_paper_settings(name, arg, margin):
  config = _load(name, arg)
  assert config.loss.margin == margin  # Sec. 4.3 / 4.4
  assert config.loss.pt_weight == 0.0 and _load(name, 'ebgan_pt').loss.pt_weight == 0.1
  assert _load(name, 'dcgan').loss.kind == 'gan'
  # Radford et al. (2015), followed by App. C: Adam, lr 0.0002, beta1 0.5, batch 64.
  assert (config.optim.optim_d, config.optim.optim_g) == ('adam', 'adam')
  assert config.optim.lr_d == config.optim.lr_g == 2e-4 and config.optim.b1 == 0.5
  assert config.batch_size == 64 and config.model.dtype == 'auto' and not config.cache


def test_lsun_patches_and_dog_subset_settings():
  patches = _load('lsun_bedroom', 'ebgan,patches')
  assert (patches.image_size, patches.resize_size, patches.random_crop) == (64, 96, True)
  assert _load('imagenet256', 'ebgan').dataset == 'imagenet2012_dogs'
  assert _load('imagenet256', 'ebgan').image_size == 256
  assert _load('imagenet128', 'ebgan').image_size == 128


@pytest.mark.slow
def test_celeba_tiny_trains_with_train_and_evaluate(tfds_data_dir, tmp_path, random_inception):
  config = _load('celeba', 'ebgan_pt,tiny', tfds_data_dir)
  config.ema_decay = 0.5  # samples and checkpoints with the generator EMA
  weights = random_inception[1]
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    state = train.train_and_evaluate(config, str(tmp_path / 'run'))
    # FID of the run (EMA samples) against its mock train images, random Inception weights.
    value, fid_step = inception.fid_of_run(str(tmp_path / 'run'), str(weights), num=4,
                                           batch_size=4)
  assert fid_step == 3 and np.isfinite(value) and value > 0
  assert int(state.step) == config.total_steps == 3
  assert all(np.isfinite(x).all() for x in jax.tree.leaves((state.g.params, state.g_ema)))
  assert (tmp_path / 'run' / 'samples' / 'step_0000003.png').exists()
  assert (tmp_path / 'run' / 'checkpoints' / '3').exists()


@pytest.mark.slow
@pytest.mark.parametrize('name,arg', [('imagenet128', 'dcgan,tiny'), ('imagenet256', 'ebgan,tiny')])
def test_tiny_imagenet_config_trains_on_mock_data(tfds_data_dir, name, arg):
  config = _load(name, arg, tfds_data_dir)
  mock = 200 if config.dataset == 'imagenet2012_dogs' else MOCK_EXAMPLES  # ~12% are dogs
  with tfds.testing.mock_data(num_examples=mock):
    input_pipeline._count_subset.cache_clear()
    (batch,) = _mock_batches(config, 1)
  assert batch.shape == (config.batch_size, config.image_size, config.image_size, 3)
  trainer = step.Trainer(config, 1)
  state = jax.jit(trainer.create_state)(jax.random.key(0))
  # Zero the output layers: G(z) = tanh(0) = 0, and D's reconstruction (or logit) is 0. Then
  # D's metrics (taken before its update) are known by construction, for any model
  # whose outputs are those layers' outputs: D(x) = ||0 - x||_2 (Eq. 13), and the fake batch,
  # all zeros, is reconstructed perfectly: D(G(z)) = 0, so the hinge [m - 0]^+ = m is active.
  d_output = max((k for k in state.d.params if k.startswith('dec_conv_')),
                 key=lambda k: int(k.rsplit('_', 1)[1]), default='logit')
  zero = lambda tree: jax.tree.map(jnp.zeros_like, tree)
  state = state.replace(
      g=state.g.replace(params={**state.g.params, 'output': zero(state.g.params['output'])}),
      d=state.d.replace(params={**state.d.params, d_output: zero(state.d.params[d_output])}))
  state, metrics = jax.jit(trainer.train_step)(state, jnp.asarray(batch), jax.random.key(1))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(state.step) == 1
  norms = np.linalg.norm(np.asarray(batch, np.float64).reshape(len(batch), -1), axis=1)
  if config.loss.kind == 'ebgan':
    assert d_output == 'dec_conv_3'  # App. C: decoder (256)-(128)-(64)-(3)4c2s.
    margin = config.loss.margin
    np.testing.assert_allclose(metrics['energy_real'], norms.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics['energy_fake'], 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics['d_loss'], norms.mean() + margin, rtol=1e-5)
  else:  # Logits 0: D's cross-entropy is -log(1/2) - log(1 - 1/2) = 2 log 2.
    assert d_output == 'logit'
    np.testing.assert_allclose(metrics['d_loss'], 2 * np.log(2), rtol=1e-6)
    np.testing.assert_allclose([metrics['d_real'], metrics['d_fake']], 0.5, rtol=1e-6)
  # (G's loss is taken under the updated D, whose output layer has moved off 0.)


# -- LSUN patches: data parallel, bf16 and EMA against one fp32 single-device run ---------------

EMA_DECAY = 0.9
LR = 5e-4  # SGD: 2 steps move G and D by ~1e-2 (measured), bf16 metrics stay within 1%.
TOLERANCE = 1e-6  # 1 device against 2 (measured: 4e-9).


def _mock_batches(config, n):
  batches = input_pipeline.train_batches(config, process_index=0, process_count=1)
  return [next(batches) for _ in range(n)]


def _lsun_config(tfds_data_dir, dtype='float32'):
  config = _load('lsun_bedroom', 'ebgan_pt,patches,tiny', tfds_data_dir)
  config.model.dtype = dtype
  config.ema_decay = EMA_DECAY
  # Plain SGD, not the paper's Adam: Adam's first steps are ~lr * sign(g), which turns the
  # round-off of another reduction order (1 device vs 2) in a gradient that is ~0 into +-lr,
  # so two Adam runs can only be compared to ~4 lr, which they can barely miss. SGD moves each
  # parameter by lr * g: the comparison can be tight (multihost_test.py does the same).
  config.optim.optim_d = config.optim.optim_g = 'sgd'
  config.optim.lr_d = config.optim.lr_g = LR
  return config


def _run(config, init_state, batches, num_devices):
  """Host copies of (metrics per step, state after each step) from `init_state`."""
  trainer = step.Trainer(config, len(batches))
  mesh = sharding.make_mesh(num_devices)
  state = jax.device_put(init_state, sharding.replicated(mesh))
  train_step = step.jit_train_step(trainer, mesh)
  metrics, states = [], []
  for batch in batches:
    state, m = train_step(state, sharding.global_batch(batch, mesh), jax.random.key(1))
    metrics.append(jax.device_get(m))
    states.append(jax.device_get(state))
  return metrics, states


@pytest.fixture(scope='module')
def lsun_fp32(tfds_data_dir):
  """The tiny LSUN-patches config (fp32, EMA on), 2 steps on 1 device from mock batches."""
  config = _lsun_config(tfds_data_dir)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    batches = _mock_batches(config, 2)
  init_state = jax.device_get(jax.jit(step.Trainer(config).create_state)(jax.random.key(0)))
  metrics, states = _run(config, init_state, batches, 1)
  return dict(config=config, batches=batches, init=init_state, metrics=metrics, states=states)


def test_lsun_patches_tiny_trains(lsun_fp32):
  assert lsun_fp32['batches'][0].shape == (4, 64, 64, 3)
  for m in lsun_fp32['metrics']:
    assert all(np.isfinite(v) for v in m.values()), m
  assert [int(s.step) for s in lsun_fp32['states']] == [1, 2]


def test_two_devices_match_one(lsun_fp32):
  assert jax.device_count() >= 2
  two_metrics, two_states = _run(lsun_fp32['config'], lsun_fp32['init'], lsun_fp32['batches'], 2)
  for a, b in zip(lsun_fp32['metrics'], two_metrics):
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)
  init, one, two = lsun_fp32['init'], lsun_fp32['states'][-1], two_states[-1]
  trees = lambda s: (s.g.params, s.d.params, s.g_ema)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=TOLERANCE, rtol=TOLERANCE),
               trees(one), trees(two))
  # The 2 SGD steps moved both players far more than the tolerance (the check can fail).
  for player in ('g', 'd'):
    before, after = (jax.tree.leaves(getattr(s, player).params) for s in (init, one))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after))
    assert moved > 1000 * TOLERANCE, (player, moved)
  # The BN running statistics after step 1 come from the initial params alone: tight.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6),
               lsun_fp32['states'][0].d.batch_stats, two_states[0].d.batch_stats)


def test_bf16_compute_matches_fp32(lsun_fp32, tfds_data_dir):
  config = _lsun_config(tfds_data_dir, dtype='bfloat16')
  bf16_metrics, bf16_states = _run(config, lsun_fp32['init'], lsun_fp32['batches'], 1)
  # Parameters, optimizer states and the EMA stay float32; energies and losses are float32.
  for leaf in jax.tree.leaves((bf16_states[-1].g, bf16_states[-1].d, bf16_states[-1].g_ema)):
    assert leaf.dtype in (np.float32, np.int32), leaf.dtype
  for a, b in zip(lsun_fp32['metrics'], bf16_metrics):
    for key in ('d_loss', 'g_loss', 'energy_real', 'energy_fake', 'pt'):
      assert b[key].dtype == np.float32
      np.testing.assert_allclose(b[key], a[key], rtol=3e-2, atol=1e-3, err_msg=key)


def test_dtype_auto_is_float32_on_cpu(tfds_data_dir):
  from ebgan_jax import models  # pylint: disable=g-import-not-at-top
  assert jax.default_backend() == 'cpu'
  assert models._dtype(_lsun_config(tfds_data_dir, 'auto')) == jnp.float32
  assert models._dtype(_lsun_config(tfds_data_dir, 'bfloat16')) == jnp.bfloat16


def test_generator_ema_by_hand(lsun_fp32, tmp_path):
  """With decay d: g_ema starts at G's params, then g_ema <- d * g_ema + (1 - d) * new."""
  d = EMA_DECAY
  init, (s1, s2) = lsun_fp32['init'], lsun_fp32['states']
  jax.tree.map(np.testing.assert_array_equal, init.g_ema, init.g.params)
  close = lambda e, g: np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-8)
  jax.tree.map(close, jax.tree.map(lambda o, n: d * o + (1 - d) * n, init.g.params,
                                   s1.g.params), s1.g_ema)
  jax.tree.map(close, jax.tree.map(lambda o, n: d * o + (1 - d) * n, s1.g_ema,
                                   s2.g.params), s2.g_ema)
  assert not np.allclose(jax.tree.leaves(s1.g.params)[0], jax.tree.leaves(init.g.params)[0])
  trainer = step.Trainer(lsun_fp32['config'])
  assert trainer.sample_params(s2) is s2.g_ema
  # The state with its EMA saves and restores (orbax) and stacks (a vmapped population).
  ckpt = checkpoint.Checkpointer(tmp_path / 'ckpt')
  ckpt.save(2, s2)
  restored, restored_step = ckpt.restore_latest(jax.eval_shape(lambda: s2))
  ckpt.close()
  assert restored_step == 2
  jax.tree.map(np.testing.assert_array_equal, restored.g_ema, s2.g_ema)
  stacked = jax.tree.map(lambda x: np.stack([x, x]), s2)
  assert jax.tree.leaves(stacked.g_ema)[0].shape[0] == 2


def test_no_ema_has_no_leaves():
  trainer = step.Trainer(_load('celeba', 'ebgan,tiny'))
  state = jax.eval_shape(trainer.create_state, jax.random.key(0))
  assert state.g_ema is None
  assert trainer.sample_params(state) is state.g.params


def test_ema_decay_out_of_range_raises():
  config = _load('celeba', 'ebgan,tiny')
  config.ema_decay = 1.0
  with pytest.raises(ValueError, match='ema_decay'):
    step.Trainer(config)


def test_configs_have_docstring_launch_commands():
  for name in ('celeba', 'lsun_bedroom', 'imagenet128', 'imagenet256'):
    doc = importlib.import_module(f'configs.{name}').__doc__
    assert f'--config=configs/{name}.py:' in doc
    assert pathlib.Path(__file__).parents[1].joinpath('configs', f'{name}.py').exists()
