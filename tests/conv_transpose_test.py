"""Tests for the "4c2s" layers: every lowering computes the same function and gradients."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax.models import conv_transpose as ct

# (batch, height, width, C_in, C_out): odd, non-square and 1-pixel inputs, 1 to 8 channels.
# An 'rbg' key: a threefry-based init compiles far more slowly on XLA:CPU.
_KEY = jax.random.key(0, impl='rbg')

SHAPES = [(2, 4, 4, 3, 5), (1, 5, 3, 2, 1), (3, 1, 1, 4, 2), (2, 8, 6, 8, 3)]


def _numpy_conv_transpose(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Scatter form of a 4x4 stride-2 transposed convolution with padding 1.

  Input pixel i adds x[i] * K[k] to output 2i + 2 - k (flax's unflipped kernel; PyTorch's
  ConvTranspose2d(k=4, s=2, p=1) adds x[i] * W[k'] to 2i - 1 + k', i.e. K[k] = W[3 - k]).
  Outputs outside [0, 2n) are cropped away by the padding.
  """
  batch, height, width, _ = x.shape
  out = np.zeros((batch, 2 * height, 2 * width, kernel.shape[-1]), np.float64)
  for i in range(height):
    for j in range(width):
      for k in range(4):
        for l in range(4):
          o, p = 2 * i + 2 - k, 2 * j + 2 - l
          if 0 <= o < 2 * height and 0 <= p < 2 * width:
            out[:, o, p] += x[:, i, j] @ kernel[k, l]
  return out


def _numpy_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Direct 4x4 stride-2 convolution with padding 1: y[o] = sum_k xpad[2o + k] K[k]."""
  batch, height, width, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((batch, height // 2, width // 2, kernel.shape[-1]), np.float64)
  for o in range(height // 2):
    for p in range(width // 2):
      window = xp[:, 2 * o:2 * o + 4, 2 * p:2 * p + 4]  # [B, 4, 4, C_in]
      out[:, o, p] = np.einsum('bklc,klcd->bd', window, kernel)
  return out


def _random(shape, seed):
  # numpy's generator: jax.random would compile a threefry kernel for every shape.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('impl', ['lax', 'subpixel', 'phase', 'phase_matmul', 'col2im'])
def test_conv_transpose_2x_matches_scatter_reference(shape, impl):
  batch, height, width, c_in, c_out = shape
  x, kernel = _random((batch, height, width, c_in), 0), _random((4, 4, c_in, c_out), 1)
  got = jax.jit(ct._TRANSPOSE_IMPLS[impl])(x, kernel)
  chex.assert_shape(got, (batch, 2 * height, 2 * width, c_out))
  want = _numpy_conv_transpose(np.asarray(x, np.float64), np.asarray(kernel, np.float64))
  chex.assert_trees_all_close(got, want.astype(np.float32), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('impl', ['subpixel', 'phase', 'phase_matmul', 'col2im'])
def test_lowering_matches_lax_conv_transpose_values_and_grads(shape, impl):
  batch, height, width, c_in, c_out = shape
  x, kernel = _random((batch, height, width, c_in), 2), _random((4, 4, c_in, c_out), 3)
  cotangent = _random((batch, 2 * height, 2 * width, c_out), 4)

  def reference(x, kernel):
    return jax.lax.conv_transpose(x, kernel, (2, 2), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def value_and_vjp(fn):
    out, vjp = jax.vjp(fn, x, kernel)
    return out, vjp(cotangent)

  want = jax.jit(lambda: value_and_vjp(reference))()
  got = jax.jit(lambda: value_and_vjp(ct._TRANSPOSE_IMPLS[impl]))()
  chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('shape', [(2, 4, 4, 3, 5), (1, 6, 2, 2, 1), (2, 8, 6, 8, 3)])
def test_conv_2x_matches_direct_reference_and_lax_grads(shape):
  batch, height, width, c_in, c_out = shape
  x, kernel = _random((batch, height, width, c_in), 5), _random((4, 4, c_in, c_out), 6)
  want = _numpy_conv(np.asarray(x, np.float64), np.asarray(kernel, np.float64))
  cotangent = _random(want.shape, 7)

  def value_and_vjp(fn):
    out, vjp = jax.vjp(fn, x, kernel)
    return out, vjp(cotangent)

  got_lax = jax.jit(lambda: value_and_vjp(ct.conv_2x_lax))()
  got_s2d = jax.jit(lambda: value_and_vjp(ct.conv_2x_space_to_depth))()
  chex.assert_trees_all_close(got_lax[0], want.astype(np.float32), atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(got_s2d, got_lax, atol=1e-4, rtol=1e-4)


def test_conv_transpose_2x_module_equals_flax_conv_transpose_with_same_params():
  x = _random((2, 4, 4, 3), 8)
  flax_layer = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding='SAME',
                                bias_init=nn.initializers.normal(1.0))
  variables = flax_layer.init(_KEY, x)
  want = flax_layer.apply(variables, x)
  for impl in ('lax', 'subpixel', 'phase', 'phase_matmul', 'col2im', 'auto'):
    got = ct.ConvTranspose2x(5, impl=impl).apply(variables, x)  # Same parameter tree.
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_conv_2x_module_equals_flax_conv_with_same_params():
  x = _random((2, 8, 8, 3), 9)
  flax_layer = nn.Conv(5, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                       bias_init=nn.initializers.normal(1.0))
  variables = flax_layer.init(_KEY, x)
  want = flax_layer.apply(variables, x)
  for impl in ('lax', 'space_to_depth', 'auto'):
    got = ct.Conv2x(5, impl=impl).apply(variables, x)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_auto_picks_measured_lowering_per_backend():
  # CPU: the im2col product, but col2im for the few-channel (RGB) output layers.
  assert ct.resolve_transpose_impl('auto', 64, 'cpu') == 'phase_matmul'
  assert ct.resolve_transpose_impl('auto', 3, 'cpu') == 'col2im'
  assert ct.resolve_transpose_impl('auto', 3, 'gpu') == 'subpixel'  # H200 timing
  assert ct.resolve_transpose_impl('auto', 64, 'tpu') == 'lax'
  assert ct.resolve_transpose_impl('phase', 3, 'cpu') == 'phase'
  assert ct.resolve_impl('auto', ct._AUTO_CONV_IMPL, 'cpu') == 'space_to_depth'
  assert ct.resolve_impl('auto', ct._AUTO_CONV_IMPL, 'gpu') == 'space_to_depth'
  assert ct.resolve_impl('auto', ct._AUTO_CONV_IMPL, 'tpu') == 'lax'
  assert ct.resolve_impl('lax', ct._AUTO_TRANSPOSE_IMPL, 'cpu') == 'lax'


def test_bfloat16_compute_keeps_float32_params():
  x = _random((2, 4, 4, 3), 10)
  layer = ct.ConvTranspose2x(4, dtype=jnp.bfloat16)
  variables = layer.init(_KEY, x)
  chex.assert_trees_all_equal_dtypes(variables, {'params': {'kernel': jnp.zeros((), jnp.float32),
                                                            'bias': jnp.zeros((), jnp.float32)}})
  assert layer.apply(variables, x).dtype == jnp.bfloat16


def test_unknown_impl_is_rejected():
  with pytest.raises(ValueError, match='impl'):
    ct.ConvTranspose2x(4, impl='fft').init(_KEY, jnp.zeros((1, 2, 2, 1)))
