"""Tests of ebgan_jax.models: Table 1's knobs, App. C's BN placement and initialisation.

Shapes are checked with `jax.eval_shape` (no FLOPs). The BN placement and the call order are
checked against module names written out by hand for 4-layer models.
"""

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ebgan_jax import models
from ebgan_jax.models import mlp

# Table 1 (Sec. 4.1): the grid-search axes.
N_LAYERS = (2, 3, 4, 5)
SIZES_G = (400, 800, 1600, 3200)
SIZES_D = (128, 256, 512, 1024)
DROPOUTS = (True, False)
IMAGE_SIZES = (32, 28)  # zero-padded MNIST (App. D, "Other details") and unpadded
BATCH = 3
LATENT = 100


def _config(*, kind='ebgan', image_size=32, n_layer_g=5, size_g=800, n_layer_d=2, size_d=1024,
            dropout_d=False):
  config = common.base_config()
  config.image_size = image_size
  config.loss.kind = kind
  config.model.latent_dim = LATENT
  m = config.model
  m.n_layer_g, m.size_g, m.n_layer_d, m.size_d, m.dropout_d = (
      n_layer_g, size_g, n_layer_d, size_d, dropout_d)
  return config


def _init_shapes(module, x):
  """(output shapes, variable shapes) of module.init_with_output in train mode, abstractly."""
  def init(key, x):
    return module.init_with_output({'params': key, 'dropout': key}, x, train=True)
  return jax.eval_shape(init, jax.random.key(0), x)


# -- output shapes for every Table 1 knob value -----------------------------------------------

@pytest.mark.parametrize('image_size', IMAGE_SIZES)
@pytest.mark.parametrize('n_layer_g,size_g', list(itertools.product(N_LAYERS, SIZES_G)))
def test_generator_output_shape(n_layer_g, size_g, image_size):
  config = _config(image_size=image_size, n_layer_g=n_layer_g, size_g=size_g)
  g = models.get_generator(config)
  z = jax.ShapeDtypeStruct((BATCH, LATENT), jnp.float32)
  out, variables = _init_shapes(g, z)
  chex.assert_shape(out, (BATCH, image_size, image_size, 1))
  assert out.dtype == jnp.float32
  # n_layer_g weight layers: n_layer_g - 1 hidden Dense(size_g) plus the output Dense.
  dense = [k for k in variables['params'] if k.startswith('dense_')]
  assert len(dense) == n_layer_g - 1
  chex.assert_shape(variables['params']['dense_0']['kernel'], (LATENT, size_g))
  chex.assert_shape(variables['params']['output']['kernel'], (size_g, image_size**2))


@pytest.mark.parametrize('image_size', IMAGE_SIZES)
@pytest.mark.parametrize('n_layer_d,size_d,dropout',
                         list(itertools.product(N_LAYERS, SIZES_D, DROPOUTS)))
def test_autoencoder_output_shapes(n_layer_d, size_d, dropout, image_size):
  config = _config(image_size=image_size, n_layer_d=n_layer_d, size_d=size_d, dropout_d=dropout)
  d = models.get_discriminator(config)
  assert isinstance(d, mlp.MLPAutoEncoder)
  x = jax.ShapeDtypeStruct((BATCH, image_size, image_size, 1), jnp.float32)
  (x_rec, code), variables = _init_shapes(d, x)
  chex.assert_shape(x_rec, (BATCH, image_size, image_size, 1))
  chex.assert_shape(code, (BATCH, size_d))
  # Sec. 4.1 (ii): nLayerD counts Enc and Dec together, Dec is one layer.
  enc = [k for k in variables['params'] if k.startswith('enc_dense_')]
  assert len(enc) == n_layer_d - 1
  chex.assert_shape(variables['params']['dec_dense']['kernel'], (size_d, image_size**2))


@pytest.mark.parametrize('image_size', IMAGE_SIZES)
@pytest.mark.parametrize('n_layer_d,size_d,dropout',
                         list(itertools.product(N_LAYERS, SIZES_D, DROPOUTS)))
def test_binary_discriminator_output_shape(n_layer_d, size_d, dropout, image_size):
  config = _config(kind='gan', image_size=image_size, n_layer_d=n_layer_d, size_d=size_d,
                   dropout_d=dropout)
  d = models.get_discriminator(config)
  assert isinstance(d, mlp.MLPDiscriminator)
  x = jax.ShapeDtypeStruct((BATCH, image_size, image_size, 1), jnp.float32)
  logits, variables = _init_shapes(d, x)
  chex.assert_shape(logits, (BATCH,))
  hidden = [k for k in variables['params'] if k.startswith('dense_')]
  assert len(hidden) == n_layer_d - 1
  chex.assert_shape(variables['params']['logit']['kernel'], (size_d, 1))


# -- BN placement (App. C): names and call order, by hand for n_layers = 4 --------------------

def _call_order(module, x, rngs):
  """Names of the submodules of `module` in the order they are called (train mode).

  Everything runs abstractly (`jax.eval_shape`); the interceptor records at trace time.
  """
  order = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and context.module.name is not None:
      order.append(context.module.name)  # the top-level module has no name
    return next_fun(*args, **kwargs)

  variables = jax.eval_shape(lambda r, x: module.init(r, x, train=True), rngs, x)
  with nn.intercept_methods(record):
    jax.eval_shape(
        lambda v, r, x: module.apply(v, x, train=True, rngs=r, mutable=['batch_stats']),
        variables, rngs, x)
  return order, variables


def test_generator_batch_norm_after_every_hidden_layer_not_the_output():
  g = mlp.MLPGenerator(n_layers=4, width=8, image_shape=(32, 32, 1))
  order, variables = _call_order(g, jnp.zeros((2, 5)), {'params': jax.random.key(0)})
  assert order == ['dense_0', 'bn_0', 'dense_1', 'bn_1', 'dense_2', 'bn_2', 'output']
  assert set(variables['params']) == {'dense_0', 'bn_0', 'dense_1', 'bn_1', 'dense_2', 'bn_2',
                                      'output'}
  assert set(variables['batch_stats']) == {'bn_0', 'bn_1', 'bn_2'}
  chex.assert_shape(variables['params']['bn_2']['scale'], (8,))


def test_autoencoder_batch_norm_not_after_input_or_output_layer():
  d = mlp.MLPAutoEncoder(n_layers=4, width=8, image_shape=(4, 4, 1), dropout=False)
  order, variables = _call_order(d, jnp.zeros((2, 4, 4, 1)), {'params': jax.random.key(0)})
  # Input layer enc_dense_0 has no BN; the other encoder layers have one; the decoder (D's
  # output layer, linear reconstruction) has none.
  assert order == ['enc_dense_0', 'enc_dense_1', 'enc_bn_1', 'enc_dense_2', 'enc_bn_2',
                   'dec_dense']
  assert set(variables['params']) == {'enc_dense_0', 'enc_dense_1', 'enc_bn_1', 'enc_dense_2',
                                      'enc_bn_2', 'dec_dense'}
  assert set(variables['batch_stats']) == {'enc_bn_1', 'enc_bn_2'}
  chex.assert_shape(variables['params']['dec_dense']['bias'], (16,))  # 4 * 4 * 1 pixels


def test_binary_discriminator_batch_norm_not_after_input_or_logit():
  d = mlp.MLPDiscriminator(n_layers=4, width=8, image_shape=(4, 4, 1), dropout=False)
  order, variables = _call_order(d, jnp.zeros((2, 4, 4, 1)), {'params': jax.random.key(0)})
  assert order == ['dense_0', 'dense_1', 'bn_1', 'dense_2', 'bn_2', 'logit']
  assert set(variables['params']) == {'dense_0', 'dense_1', 'bn_1', 'dense_2', 'bn_2', 'logit'}
  assert set(variables['batch_stats']) == {'bn_1', 'bn_2'}


def test_dropout_follows_each_encoder_layer_when_enabled():
  d = mlp.MLPAutoEncoder(n_layers=3, width=8, image_shape=(4, 4, 1), dropout=True)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  order, _ = _call_order(d, jnp.zeros((2, 4, 4, 1)), rngs)
  assert order == ['enc_dense_0', 'Dropout_0', 'enc_dense_1', 'enc_bn_1', 'Dropout_1',
                   'dec_dense']


# -- initialisation (App. C): G ~ N(0, 0.02), D ~ N(0, 0.002), biases 0 ------------------------

def _kernels_and_biases(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  kernels = {jax.tree_util.keystr(p): v for p, v in flat if p[-1].key == 'kernel'}
  biases = {jax.tree_util.keystr(p): v for p, v in flat if p[-1].key == 'bias'}
  return kernels, biases


def _assert_std(kernel, expected):
  k = np.asarray(kernel, np.float64)
  assert k.size >= 100_000  # sample std within ~0.3% of the truth (1 / sqrt(2n))
  assert abs(k.std() / expected - 1.0) < 0.03, (k.std(), expected)
  assert abs(k.mean()) < 0.05 * expected


@pytest.fixture(scope='module')
def mnist_params():
  """Real (not abstract) params of G and both D kinds at Figure 4's sizes."""
  config = _config(n_layer_g=3, size_g=800, n_layer_d=3, size_d=512)
  x = jnp.zeros((2, 32, 32, 1))
  z = jnp.zeros((2, LATENT))
  key = jax.random.key(0)
  g = jax.jit(lambda k: models.get_generator(config).init(k, z, train=False))(key)
  ae = jax.jit(lambda k: models.get_discriminator(config).init(k, x, train=False))(key)
  config.loss.kind = 'gan'
  binary = jax.jit(lambda k: models.get_discriminator(config).init(k, x, train=False))(key)
  return {'g': g['params'], 'ae': ae['params'], 'binary': binary['params']}


def test_generator_kernels_std_002_biases_zero(mnist_params):
  kernels, biases = _kernels_and_biases(mnist_params['g'])
  _assert_std(kernels["['dense_1']['kernel']"], 0.02)   # 800 x 800
  _assert_std(kernels["['output']['kernel']"], 0.02)    # 800 x 1024
  for name, bias in biases.items():
    assert not np.any(np.asarray(bias)), name


@pytest.mark.parametrize('which', ['ae', 'binary'])
def test_discriminator_kernels_std_0002_biases_zero(mnist_params, which):
  kernels, biases = _kernels_and_biases(mnist_params[which])
  first = "['enc_dense_0']['kernel']" if which == 'ae' else "['dense_0']['kernel']"
  _assert_std(kernels[first], 0.002)  # 1024 x 512
  if which == 'ae':
    _assert_std(kernels["['dec_dense']['kernel']"], 0.002)  # 512 x 1024
  # Every kernel is on D's scale: none is 10x larger (G's) or a default Lecun init.
  for name, k in kernels.items():
    assert float(np.std(np.asarray(k))) < 0.003, name
  for name, bias in biases.items():
    assert not np.any(np.asarray(bias)), name


# -- dropout -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def dropout_setup():
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
  d_on = mlp.MLPAutoEncoder(n_layers=3, width=32, image_shape=(8, 8, 1), dropout=True)
  d_off = mlp.MLPAutoEncoder(n_layers=3, width=32, image_shape=(8, 8, 1), dropout=False)
  variables = jax.jit(lambda k: d_on.init(k, x, train=False))(jax.random.key(0))  # shared

  @jax.jit
  def _run(variables, x, seed):
    return {(name, train): m.apply(variables, x, train=train,
                                   rngs={'dropout': jax.random.key(seed)},
                                   mutable=['batch_stats'])[0][0]  # the reconstruction
            for name, m in (('on', d_on), ('off', d_off)) for train in (True, False)}

  def run(module, train, seed):
    return _run(variables, x, seed)['on' if module.dropout else 'off', train]
  return d_on, d_off, run


def test_dropout_train_mode_depends_on_dropout_rng(dropout_setup):
  d_on, _, run = dropout_setup
  a, b = run(d_on, True, 1), run(d_on, True, 2)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_dropout_eval_mode_is_deterministic(dropout_setup):
  d_on, _, run = dropout_setup
  chex.assert_trees_all_equal(run(d_on, False, 1), run(d_on, False, 2))


def test_no_dropout_train_mode_ignores_dropout_rng(dropout_setup):
  _, d_off, run = dropout_setup
  chex.assert_trees_all_equal(run(d_off, True, 1), run(d_off, True, 2))


def test_binary_discriminator_dropout_train_vs_eval():
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
  d = mlp.MLPDiscriminator(n_layers=3, width=32, image_shape=(8, 8, 1), dropout=True)
  variables = jax.jit(lambda k: d.init(k, x, train=False))(jax.random.key(0))

  @jax.jit
  def run(seed):
    return {train: d.apply(variables, x, train=train, rngs={'dropout': jax.random.key(seed)},
                           mutable=['batch_stats'])[0]
            for train in (True, False)}
  a, b = run(1), run(2)
  assert float(jnp.max(jnp.abs(a[True] - b[True]))) > 0
  chex.assert_trees_all_equal(a[False], b[False])


# -- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['ebgan', 'gan'])
def test_image_shape_mismatch_names_config_image_size(kind):
  config = _config(kind=kind, image_size=32)
  d = models.get_discriminator(config)
  x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
  with pytest.raises(ValueError, match=r'config\.image_size'):
    jax.eval_shape(lambda k, x: d.init(k, x, train=False), jax.random.key(0), x)


@pytest.mark.parametrize('n', [0, 1])
def test_fewer_than_two_layers_raise(n):
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match='>= 2'):
    mlp.MLPGenerator(n_layers=n, width=4, image_shape=(4, 4, 1)).init(
        jax.random.key(0), jnp.zeros((2, 3)), train=False)
  with pytest.raises(ValueError, match='>= 2'):
    mlp.MLPAutoEncoder(n_layers=n, width=4, image_shape=(4, 4, 1)).init(
        jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match='>= 2'):
    mlp.MLPDiscriminator(n_layers=n, width=4, image_shape=(4, 4, 1)).init(
        jax.random.key(0), x, train=False)


def test_unknown_family_raises():
  config = _config()
  config.model.family = 'no_such_family'
  with pytest.raises(ValueError, match='no_such_family'):
    models.get_generator(config)
  with pytest.raises(ValueError, match='no_such_family'):
    models.get_discriminator(config)


def test_unknown_loss_kind_raises():
  config = _config()
  config.loss.kind = 'wgan'
  with pytest.raises(ValueError, match='wgan'):
    models.get_discriminator(config)


def test_image_shape_follows_config():
  config = _config(image_size=28)
  config.channels = 3
  assert models.image_shape(config) == (28, 28, 3)
