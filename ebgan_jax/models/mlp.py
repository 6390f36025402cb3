"""Fully-connected generator and discriminators of the MNIST grid search (Sec. 4.1, Table 1).

Appendix C fixes the details every model here follows:
- batch normalization after each weight layer, except the generator's output layer and the
  discriminator's input layer (Radford et al., 2015);
- ReLU non-linearities; the generator output goes through tanh (images are in [-1, 1]);
- weights initialised from N(0, 0.002) in D and N(0, 0.02) in G (0.002 and 0.02 are standard
  deviations), biases at 0.
A Dense layer followed by BatchNorm has no bias of its own (BN's shift replaces it, as in
DCGAN): BN subtracts the batch mean, so such a bias has an analytically zero gradient, and
Adam would turn the round-off in it into +-lr steps that differ with the device count.

Table 1's knobs: `n_layers` (nLayerG / nLayerD) counts weight layers, `width` (sizeG / sizeD)
the units of each hidden layer, `dropout` (dropoutD) switches dropout on in D.

Dropout masks are drawn feature-major (`_dropout`), so that a layer zero-padded to more
units draws the same masks for its real units (padded populations, `ebgan_jax.padding`).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

G_KERNEL_INIT = nn.initializers.normal(stddev=0.02)   # App. C: G weights ~ N(0, 0.02).
D_KERNEL_INIT = nn.initializers.normal(stddev=0.002)  # App. C: D weights ~ N(0, 0.002).
BN_MOMENTUM = 0.9   # Torch's BatchNorm default (running = 0.9 running + 0.1 batch).
BN_EPSILON = 1e-5   # Torch's BatchNorm default.
DROPOUT_RATE = 0.5  # Table 1 says only "dropoutD: true/false"; 0.5 is the usual rate.


def batch_norm(train: bool, name: str, use_scale: bool = True,
               dtype: jnp.dtype | None = None) -> nn.BatchNorm:
  """BatchNorm over the batch (and spatial) axes; under `jax.jit` on a mesh the statistics are
  global. `dtype` is the output's (statistics are always computed in float32)."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      use_scale=use_scale, dtype=dtype, name=name)


class MLPGenerator(nn.Module):
  """G: z -> image, `n_layers` Dense layers (the last one is the output layer).

  Hidden layers: Dense(width) -> BN -> ReLU. Output layer: Dense(H*W*C) -> tanh, no BN.
  """
  n_layers: int
  width: int
  image_shape: Sequence[int]  # (H, W, C)

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    """Maps z [B, latent] to images [B, H, W, C] in [-1, 1]."""
    if self.n_layers < 2:
      raise ValueError(f'n_layer_g must be >= 2 (one hidden and the output layer), '
                       f'got {self.n_layers}.')
    h = z
    for i in range(self.n_layers - 1):
      h = nn.Dense(self.width, kernel_init=G_KERNEL_INIT, use_bias=False, name=f'dense_{i}')(h)
      h = batch_norm(train, name=f'bn_{i}')(h)
      h = nn.relu(h)
    h = nn.Dense(math.prod(self.image_shape), kernel_init=G_KERNEL_INIT, name='output')(h)
    return jnp.tanh(h).reshape(z.shape[0], *self.image_shape)


class MLPAutoEncoder(nn.Module):
  """EBGAN's auto-encoder discriminator D(x) = ||Dec(Enc(x)) - x|| (Eq. 13), fully connected.

  Sec. 4.1 (ii): nLayerD is the total number of layers of Enc and Dec, and Dec is fixed to
  one layer, so the encoder has `n_layers - 1` Dense(width) layers. Encoder: the input layer
  is Dense -> ReLU (no BN, App. C), the others Dense -> BN -> ReLU, each followed by dropout
  when enabled. Decoder: one linear Dense(H*W*C) layer without BN. App. C puts BN "after each
  weight layer, except for the generator output layer and the discriminator input layer",
  citing Radford et al. (2015), whose discriminators have no BN on their output layer either;
  we read the decoder's output layer as D's output layer. A BN there would also let a collapsed
  generator win: with every fake alike, the fake batch's per-pixel variance vanishes, BN
  outputs its shift beta for every fake, and a generator that draws beta (the mean digit) gets
  near-zero energy.

  Returns the reconstruction and the encoder code S used by the pulling-away term (Eq. 14).
  """
  n_layers: int
  width: int
  image_shape: Sequence[int]
  dropout: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_on: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Maps x [B, H, W, C] to (reconstruction [B, H, W, C], code [B, width]).

    `dropout_on`: a per-member dropout switch (`_dropout`); None: dropout when `dropout`.
    """
    if self.n_layers < 2:
      raise ValueError(f'n_layer_d must be >= 2 (one encoder and the decoder layer), '
                       f'got {self.n_layers}.')
    _check_image_shape(x, self.image_shape, 'discriminator')
    h = x.reshape(x.shape[0], -1)
    code = h
    for i in range(self.n_layers - 1):
      h = nn.Dense(self.width, kernel_init=D_KERNEL_INIT, use_bias=i == 0,
                   name=f'enc_dense_{i}')(h)
      if i > 0:
        h = batch_norm(train, name=f'enc_bn_{i}')(h)
      h = nn.relu(h)
      code = h  # [B, width]: the encoder output layer's representation.
      if self.dropout:
        h = _dropout(h, train, dropout_on)
    h = nn.Dense(math.prod(self.image_shape), kernel_init=D_KERNEL_INIT, name='dec_dense')(h)
    return h.reshape(x.shape), code


class MLPDiscriminator(nn.Module):
  """Binary discriminator of the probabilistic GAN baseline, same knobs as `MLPAutoEncoder`.

  `n_layers - 1` hidden Dense(width) layers (the input one without BN, the rest with BN, all
  ReLU, dropout when enabled) and a Dense(1) logit layer. The logit layer has no BN: a BN on a
  single logit would normalise away the real/fake offset between separately fed batches, which
  is why DCGAN leaves it out too.
  """
  n_layers: int
  width: int
  image_shape: Sequence[int]
  dropout: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, dropout_on: jax.Array | None = None
               ) -> jax.Array:
    """Maps x [B, H, W, C] to logits [B] (`dropout_on` as in `MLPAutoEncoder`)."""
    if self.n_layers < 2:
      raise ValueError(f'n_layer_d must be >= 2, got {self.n_layers}.')
    _check_image_shape(x, self.image_shape, 'discriminator')
    h = x.reshape(x.shape[0], -1)
    for i in range(self.n_layers - 1):
      h = nn.Dense(self.width, kernel_init=D_KERNEL_INIT, use_bias=i == 0, name=f'dense_{i}')(h)
      if i > 0:
        h = batch_norm(train, name=f'bn_{i}')(h)
      h = nn.relu(h)
      if self.dropout:
        h = _dropout(h, train, dropout_on)
    return nn.Dense(1, kernel_init=D_KERNEL_INIT, name='logit')(h)[:, 0]


def _dropout(h: jax.Array, train: bool, dropout_on: jax.Array | None) -> jax.Array:
  """flax's Dropout on h [B, width], its mask drawn feature-major, for a member or not.

  The mask is drawn for h.T [width, B]: with JAX's partitionable threefry (the default since
  jax 0.5), an element's random bits depend only on its row-major index, so unit j's mask
  over the batch comes from the indices j*B .. j*B + B - 1 whatever the width; a layer
  padded with extra units draws the unpadded layer's masks for its real units. (Drawn for
  [B, width], unit j of sample b would take index b*width + j, which the padding moves.)
  `dropout_on` (a boolean scalar, traced), when given, keeps h undropped where it is false:
  a member without dropout in a padded program that has it.
  """
  dropped = nn.Dropout(DROPOUT_RATE, deterministic=not train)(h.T).T
  return dropped if dropout_on is None else jnp.where(dropout_on, dropped, h)


def _check_image_shape(x: jax.Array, image_shape: Sequence[int], who: str) -> None:
  if tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(
        f'The {who} was built for images of shape {tuple(image_shape)} but got '
        f'{tuple(x.shape[1:])}. Set config.image_size (and config.channels) to match the '
        'data, e.g. --config.image_size=32 for zero-padded MNIST, 28 for unpadded.')
