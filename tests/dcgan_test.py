"""Tests for the deep convolutional models of App. C (families 'dcgan64' and 'imagenet').

Shapes and parameter counts at full width come from `jax.eval_shape` (nothing is computed);
the numerical tests use tiny widths (`config.model.width_mult`).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from ebgan_jax import losses, models

BATCH = 2
# 'rbg' keys: XLA:CPU compiles a threefry init of a conv model ~8x slower (20 s vs 2.5 s).
RNGS = {'params': jax.random.key(0, impl='rbg'), 'noise': jax.random.key(1, impl='rbg')}


def _config(family: str, image_size: int, kind: str = 'ebgan', **model):
  config = common.base_config()
  config.model.family = family
  config.image_size, config.channels = image_size, 3
  config.loss.kind = kind
  for key, value in model.items():
    config.model[key] = value
  return config


def _g_input(config):
  return jnp.zeros((BATCH, config.model.latent_dim), jnp.float32)


def _d_input(config):
  return jnp.zeros((BATCH, config.image_size, config.image_size, 3), jnp.float32)


def _shapes_and_variables(model, inputs):
  """Abstract init with every submodule's output captured: ({layer: shape}, variables)."""
  out, variables = jax.eval_shape(
      lambda: model.init_with_output(RNGS, inputs, train=False, capture_intermediates=True))
  shapes = {name: value['__call__'][0].shape
            for name, value in variables['intermediates'].items() if name != '__call__'}
  return out, shapes, variables


def _init(model, inputs):
  """Concrete init, jitted (op-by-op dispatch of a whole model is slow on CPU)."""
  return jax.jit(lambda x: model.init(RNGS, x, train=False))(inputs)


def _param_counts(variables):
  return {name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(layer))
          for name, layer in variables['params'].items()}


# --- Output shapes at every layer, full width (App. C tables). -----------------------------


def test_dcgan64_generator_layer_shapes():
  config = _config('dcgan64', 64)
  out, shapes, _ = _shapes_and_variables(models.get_generator(config), _g_input(config))
  # (512)4c from 1x1, then 4c2s doubling: 4 -> 8 -> 16 -> 32 -> 64.
  assert shapes == {
      'conv_0': (2, 4, 4, 512), 'bn_0': (2, 4, 4, 512),
      'conv_1': (2, 8, 8, 256), 'bn_1': (2, 8, 8, 256),
      'conv_2': (2, 16, 16, 128), 'bn_2': (2, 16, 16, 128),
      'conv_3': (2, 32, 32, 64), 'bn_3': (2, 32, 32, 64),
      'output': (2, 64, 64, 3)}
  chex.assert_shape(out, (2, 64, 64, 3))


def test_dcgan64_autoencoder_layer_shapes():
  config = _config('dcgan64', 64)
  (x_rec, code), shapes, _ = _shapes_and_variables(models.get_discriminator(config),
                                                   _d_input(config))
  assert shapes == {
      'enc_conv_0': (2, 32, 32, 64),
      'enc_conv_1': (2, 16, 16, 128), 'enc_bn_1': (2, 16, 16, 128),
      'enc_conv_2': (2, 8, 8, 256), 'enc_bn_2': (2, 8, 8, 256),
      'dec_conv_0': (2, 16, 16, 128), 'dec_bn_0': (2, 16, 16, 128),
      'dec_conv_1': (2, 32, 32, 64), 'dec_bn_1': (2, 32, 32, 64),
      'dec_conv_2': (2, 64, 64, 3)}
  chex.assert_shape(x_rec, (2, 64, 64, 3))
  chex.assert_shape(code, (2, 8, 8, 256))


def test_dcgan64_binary_discriminator_layer_shapes():
  config = _config('dcgan64', 64, kind='gan')
  logits, shapes, _ = _shapes_and_variables(models.get_discriminator(config), _d_input(config))
  assert shapes == {
      'conv_0': (2, 32, 32, 64),
      'conv_1': (2, 16, 16, 128), 'bn_1': (2, 16, 16, 128),
      'conv_2': (2, 8, 8, 256), 'bn_2': (2, 8, 8, 256),
      'conv_3': (2, 4, 4, 512), 'bn_3': (2, 4, 4, 512),
      'logit': (2, 1)}
  chex.assert_shape(logits, (2,))


@pytest.mark.parametrize('size', [128, 256])
def test_imagenet_generator_layer_shapes(size):
  config = _config('imagenet', size)
  out, shapes, _ = _shapes_and_variables(models.get_generator(config), _g_input(config))
  # 128: (1024)4c at 4x4, five 4c2s to 128, (3)3c at 128. 256: (2048)4c, six 4c2s to 256.
  features = {128: (1024, 512, 256, 128, 64, 64), 256: (2048, 1024, 512, 256, 128, 64, 64)}
  want = {}
  for i, n in enumerate(features[size]):
    want[f'conv_{i}'] = want[f'bn_{i}'] = (2, 4 * 2**i, 4 * 2**i, n)
  want['output'] = (2, size, size, 3)
  assert shapes == want
  chex.assert_shape(out, (2, size, size, 3))


@pytest.mark.parametrize('size', [128, 256])
def test_imagenet_autoencoder_layer_shapes(size):
  config = _config('imagenet', size)
  (x_rec, code), shapes, _ = _shapes_and_variables(models.get_discriminator(config),
                                                   _d_input(config))
  s = size
  assert shapes == {
      'enc_conv_0': (2, s // 2, s // 2, 64),
      'enc_conv_1': (2, s // 4, s // 4, 128), 'enc_bn_1': (2, s // 4, s // 4, 128),
      'enc_conv_2': (2, s // 8, s // 8, 256), 'enc_bn_2': (2, s // 8, s // 8, 256),
      'enc_conv_3': (2, s // 16, s // 16, 512), 'enc_bn_3': (2, s // 16, s // 16, 512),
      'dec_conv_0': (2, s // 8, s // 8, 256), 'dec_bn_0': (2, s // 8, s // 8, 256),
      'dec_conv_1': (2, s // 4, s // 4, 128), 'dec_bn_1': (2, s // 4, s // 4, 128),
      'dec_conv_2': (2, s // 2, s // 2, 64), 'dec_bn_2': (2, s // 2, s // 2, 64),
      'dec_conv_3': (2, s, s, 3)}
  chex.assert_shape(x_rec, (2, s, s, 3))
  chex.assert_shape(code, (2, s // 16, s // 16, 512))


# --- Parameter counts, worked out by hand (4*4*C_in*C_out + C_out per 4x4 layer, 2*C per BN).


def test_dcgan64_autoencoder_param_count():
  config = _config('dcgan64', 64)
  _, _, variables = _shapes_and_variables(models.get_discriminator(config), _d_input(config))
  want = {
      # Layers followed by BN have no bias (BN's shift replaces it).
      'enc_conv_0': 3136,    # 4*4*3*64 + 64 = 3072 + 64 (input layer: no BN, has a bias)
      'enc_conv_1': 131072,  # 4*4*64*128
      'enc_bn_1': 256,       # 2*128
      'enc_conv_2': 524288,  # 4*4*128*256
      'enc_bn_2': 512,       # 2*256
      'dec_conv_0': 524288,  # 4*4*256*128
      'dec_bn_0': 256,       # 2*128
      'dec_conv_1': 131072,  # 4*4*128*64
      'dec_bn_1': 128,       # 2*64
      'dec_conv_2': 3075}    # 4*4*64*3 + 3 = 3072 + 3; D's output layer: no BN, a bias.
  assert _param_counts(variables) == want
  assert sum(want.values()) == 1_318_083  # The sum of the above, by hand.
  # Running mean and variance: 2 * (128 + 256 + 128 + 64) = 1152.
  assert sum(x.size for x in jax.tree.leaves(variables['batch_stats'])) == 1152


def test_dcgan64_generator_param_count():
  config = _config('dcgan64', 64)  # latent_dim = 100.
  _, _, variables = _shapes_and_variables(models.get_generator(config), _g_input(config))
  want = {
      'conv_0': 819200,   # 4*4*100*512 (followed by BN: no bias)
      'bn_0': 1024,
      'conv_1': 2097152,  # 4*4*512*256
      'bn_1': 512,
      'conv_2': 524288,   # 4*4*256*128
      'bn_2': 256,
      'conv_3': 131072,   # 4*4*128*64
      'bn_3': 128,
      'output': 3075}     # 4*4*64*3 + 3
  assert _param_counts(variables) == want
  assert sum(want.values()) == 3_576_707


def test_dcgan64_binary_discriminator_param_count():
  config = _config('dcgan64', 64, kind='gan')
  _, _, variables = _shapes_and_variables(models.get_discriminator(config), _d_input(config))
  want = {
      'conv_0': 3136, 'conv_1': 131072, 'bn_1': 256, 'conv_2': 524288, 'bn_2': 512,
      'conv_3': 2097152,  # 4*4*256*512 (followed by BN: no bias)
      'bn_3': 1024,
      'logit': 8193}      # 4*4*512 + 1 (DCGAN's final 4x4 conv to one map)
  assert _param_counts(variables) == want
  assert sum(want.values()) == 2_765_633


def test_imagenet128_generator_param_count_includes_noise_planes():
  config = _config('imagenet', 128)
  _, _, variables = _shapes_and_variables(models.get_generator(config), _g_input(config))
  # Each 4c2s layer's input is the previous features plus the noise planes 64-32-16-8-4.
  want = {
      'conv_0': 1638400,  # 4*4*100*1024 (z is the "100" plane; BN follows: no bias)
      'bn_0': 2048,
      'conv_1': 8912896,  # 4*4*(1024+64)*512 = 16*1088*512
      'bn_1': 1024,
      'conv_2': 2228224,  # 4*4*(512+32)*256 = 16*544*256
      'bn_2': 512,
      'conv_3': 557056,   # 4*4*(256+16)*128 = 16*272*128
      'bn_3': 256,
      'conv_4': 139264,   # 4*4*(128+8)*64 = 16*136*64
      'bn_4': 128,
      'conv_5': 69632,    # 4*4*(64+4)*64 = 16*68*64
      'bn_5': 128,
      'output': 1731}     # 3*3*64*3 + 3
  assert _param_counts(variables) == want
  assert sum(want.values()) == 13_551_299


def test_imagenet256_generator_param_count_includes_noise_planes():
  config = _config('imagenet', 256)
  _, _, variables = _shapes_and_variables(models.get_generator(config), _g_input(config))
  want = {
      'conv_0': 3276800,   # 4*4*100*2048 (BN follows: no bias)
      'conv_1': 34603008,  # 4*4*(2048+64)*1024
      'conv_2': 8650752,   # 4*4*(1024+32)*512
      'conv_3': 2162688,   # 4*4*(512+16)*256
      'conv_4': 540672,    # 4*4*(256+8)*128
      'conv_5': 135168,    # 4*4*(128+4)*64
      'conv_6': 67584,     # 4*4*(64+2)*64
      'output': 1731}      # 3*3*64*3 + 3
  counts = _param_counts(variables)
  assert {k: v for k, v in counts.items() if not k.startswith('bn_')} == want
  # BN: 2 * (2048 + 1024 + 512 + 256 + 128 + 64 + 64) = 8192.
  assert sum(v for k, v in counts.items() if k.startswith('bn_')) == 8192
  assert sum(counts.values()) == 49_446_595


def test_imagenet_autoencoder_param_count():
  config = _config('imagenet', 128)
  _, _, variables = _shapes_and_variables(models.get_discriminator(config), _d_input(config))
  # Encoder 3136 + 131072 + 256 + 524288 + 512 + 2097152 + 1024 = 2757440 (only the input
  # layer has a bias); decoder 4*4*512*256 = 2097152, + 512 + 524288 + 256 + 131072 + 128
  # + 3075 (output layer: bias, no BN) = 2756483.
  assert sum(_param_counts(variables).values()) == 2_757_440 + 2_756_483


# --- Batch-norm placement (App. C: after every weight layer but G's output, D's input). -----


def test_batch_norm_placement():
  def layers(config, discriminator):
    model = models.get_discriminator(config) if discriminator else models.get_generator(config)
    inputs = _d_input(config) if discriminator else _g_input(config)
    variables = jax.eval_shape(lambda: model.init(RNGS, inputs, train=False))
    return sorted(variables['batch_stats']), sorted(variables['params'])

  g_bn, g_params = layers(_config('imagenet', 128), discriminator=False)
  assert g_bn == ['bn_0', 'bn_1', 'bn_2', 'bn_3', 'bn_4', 'bn_5']  # None after 'output'.
  assert 'output' in g_params
  ae_bn, _ = layers(_config('dcgan64', 64), discriminator=True)
  # No enc_bn_0 (D's input layer) and none after dec_conv_2 (D's output layer).
  assert ae_bn == ['dec_bn_0', 'dec_bn_1', 'enc_bn_1', 'enc_bn_2']
  binary_bn, binary_params = layers(_config('dcgan64', 64, kind='gan'), discriminator=True)
  assert binary_bn == ['bn_1', 'bn_2', 'bn_3']  # None after conv_0 (input) nor the logit.
  assert 'logit' in binary_params


# --- Numerical behaviour at tiny width. -----------------------------------------------------


def test_noise_planes_change_images_for_fixed_z():
  config = _config('imagenet', 128, width_mult=1 / 32)
  g = models.get_generator(config)
  z = jax.random.normal(jax.random.key(3), (BATCH, 100))
  variables = _init(g, z)
  apply = jax.jit(lambda noise_key: g.apply(variables, z, train=False,
                                            rngs={'noise': noise_key}))
  keys = [jax.random.key(seed, impl='rbg') for seed in (10, 11, 10)]
  a, b, a_again = map(apply, keys)
  chex.assert_trees_all_equal(a, a_again)
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  # Noise enters at 4x4 with 64 planes: conv_1's kernel has 1024/32 + 64 = 96 inputs.
  chex.assert_shape(variables['params']['conv_1']['kernel'], (4, 4, 96, 16))


def test_generator_output_is_tanh_range_float32_and_trains_batch_norm():
  config = _config('dcgan64', 64, width_mult=1 / 16)
  g = models.get_generator(config)
  z = jax.random.normal(jax.random.key(4), (BATCH, 100))
  variables = _init(g, z)
  images, updates = jax.jit(lambda v: g.apply(v, z, train=True, mutable=['batch_stats']))(
      variables)
  assert images.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(images))) <= 1.0
  # One train step moves the running mean from 0 toward the batch mean (momentum 0.9).
  assert float(jnp.max(jnp.abs(updates['batch_stats']['bn_0']['mean']))) > 0


def test_initialisation_follows_appendix_c():
  config = _config('dcgan64', 64, width_mult=1 / 2)
  g_vars = _init(models.get_generator(config), _g_input(config))
  d_vars = _init(models.get_discriminator(config), _d_input(config))
  # 4*4*128*64 = 131072 and 4*4*32*64 = 32768 samples: the sample std is within ~1% of 0.02
  # and 0.002.
  np.testing.assert_allclose(np.std(g_vars['params']['conv_2']['kernel']), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(d_vars['params']['enc_conv_1']['kernel']), 0.002, rtol=0.05)
  biases = 0
  for variables in (g_vars, d_vars):
    for name, layer in variables['params'].items():
      if 'bias' in layer:  # Layers followed by BN have none.
        biases += 1
        assert not np.any(layer['bias']), name  # Biases start at 0 (BN shifts too).
  # G: bn_0..bn_3 and output; D: enc_conv_0, enc_bn_1, enc_bn_2, dec_bn_0, dec_bn_1, dec_conv_2.
  assert biases == 5 + 6


def test_lowerings_agree_on_the_whole_autoencoder():
  x = jax.random.uniform(jax.random.key(5), (BATCH, 64, 64, 3), minval=-1, maxval=1)
  variables = None
  results = []
  # 'auto' on CPU: 'phase_matmul', 'col2im' for the RGB output layer, 'space_to_depth'.
  for transpose_impl, conv_impl in [('lax', 'lax'), ('subpixel', 'space_to_depth'),
                                    ('auto', 'auto')]:
    config = _config('dcgan64', 64, width_mult=1 / 16, transpose_impl=transpose_impl,
                     conv_impl=conv_impl)
    d = models.get_discriminator(config)
    variables = variables or _init(d, x)  # The lowering does not change the parameters.

    def energy(params, x, d=d):
      (x_rec, _), _ = d.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
      return jnp.mean(losses.energy(x, x_rec))

    results.append(jax.jit(jax.value_and_grad(energy, argnums=(0, 1)))(variables['params'], x))
  (value_lax, (grads_lax, dx_lax)), *fast = results
  for value_fast, (grads_fast, dx_fast) in fast:
    chex.assert_trees_all_close(value_fast, value_lax, rtol=1e-5)
    chex.assert_trees_all_close(dx_fast, dx_lax, atol=1e-6, rtol=1e-3)
    for name, grads in grads_lax.items():
      # Layers followed by BN have no bias, so every gradient leaf is compared.
      scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(grads))
      chex.assert_trees_all_close(grads_fast[name], grads, atol=1e-4 * scale, rtol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
  config = _config('dcgan64', 64, width_mult=1 / 16, dtype='bfloat16')
  d = models.get_discriminator(config)
  x = jnp.zeros((BATCH, 64, 64, 3))
  variables = _init(d, x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  (x_rec, code), state = jax.jit(
      lambda v: d.apply(v, x, train=False, capture_intermediates=True))(variables)
  assert x_rec.dtype == code.dtype == jnp.float32
  assert state['intermediates']['enc_conv_1']['__call__'][0].dtype == jnp.bfloat16


def test_imagenet_family_rejects_other_sizes():
  with pytest.raises(ValueError, match='image_size'):
    models.get_generator(_config('imagenet', 64))
  g = models.get_generator(_config('dcgan64', 32))
  with pytest.raises(ValueError, match='image_size'):
    jax.eval_shape(lambda: g.init(RNGS, jnp.zeros((1, 100)), train=False))
