"""Deep convolutional generator and discriminators for LSUN/CelebA 64x64 and ImageNet (App. C).

Architectures (App. C; "(n)4c2s" is a 4x4, stride-2 layer with n feature maps, "(n)4c" a
4x4 layer mapping the 1x1 latent to 4x4, "(n)3c" a 3x3, stride-1 layer):

- LSUN/CelebA 64x64 (Sec. 4.3). D, an auto-encoder: encoder (64)4c2s-(128)4c2s-(256)4c2s,
  decoder (128)4c2s-(64)4c2s-(3)4c2s. G is "analogous to DCGAN's": (512)4c-(256)4c2s-
  (128)4c2s-(64)4c2s-(3)4c2s, the generator of Radford et al. (2015) at 64x64. The DCGAN
  baseline's binary D is (64)4c2s-(128)4c2s-(256)4c2s-(512)4c2s and a logit layer.
- ImageNet 128x128 (Sec. 4.4). G (1024)4c-(512)4c2s-(256)4c2s-(128)4c2s-(64)4c2s-(64)4c2s-
  (3)3c with noise planes 100-64-32-16-8-4; D encoder (64)4c2s-(128)4c2s-(256)4c2s-(512)4c2s,
  decoder (256)4c2s-(128)4c2s-(64)4c2s-(3)4c2s.
- ImageNet 256x256. G (2048)4c-(1024)4c2s-(512)4c2s-(256)4c2s-(128)4c2s-(64)4c2s-(64)4c2s-
  (3)3c with noise planes 100-64-32-16-8-4-2; D as at 128x128.

Conventions shared with `mlp.py` (App. C):
- batch normalization after each weight layer except G's output layer and D's input layer;
  momentum 0.9, epsilon 1e-5 (`mlp.batch_norm`);
- weights from N(0, 0.02) in G and N(0, 0.002) in D, biases 0; a layer followed by BN has no
  bias of its own (BN's shift replaces it, as in DCGAN and `mlp.py`: such a bias has an
  analytically zero gradient, whose round-off Adam would blow up into lr-sized steps);
- G: ReLU, tanh output. D: LeakyReLU(0.2) after every hidden layer, encoder and decoder
  alike. App. C's grid-search setting says ReLU, but for these models it says "we also
  followed the guidance suggested by Radford et al. (2015)", whose guideline is "use
  LeakyReLU activation in the discriminator for all layers" (slope 0.2). `leaky_slope=0`
  gives ReLU.
- As in `mlp.MLPAutoEncoder`, the decoder's output layer (D's output layer) has neither BN
  nor a non-linearity: a BN there lets a collapsed generator reach near-zero energy (see
  `mlp.MLPAutoEncoder`). The code returned for the pulling-away term (Eq. 14) is the
  encoder's last activation, [B, h, w, C].

`dtype` is the compute dtype (e.g. bfloat16); parameters and BN statistics stay float32, and
images, reconstructions and codes are returned as float32.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebgan_jax.models import mlp
from ebgan_jax.models.conv_transpose import Conv2x, ConvTranspose2x

G_KERNEL_INIT = mlp.G_KERNEL_INIT  # App. C: G weights ~ N(0, 0.02).
D_KERNEL_INIT = mlp.D_KERNEL_INIT  # App. C: D weights ~ N(0, 0.002).
LEAKY_SLOPE = 0.2  # Radford et al. (2015), Sec. 3: "the slope of the leak was set to 0.2".
PROJECTION_SIZE = 4  # The "(n)4c" layer maps the 1x1 latent to 4x4.

# App. C channel tables, before any width multiplier.
DCGAN64_G = (512, 256, 128, 64)
DCGAN64_ENCODER = (64, 128, 256)
DCGAN64_DECODER = (128, 64)
DCGAN64_BINARY_D = (64, 128, 256, 512)
IMAGENET_G = {128: (1024, 512, 256, 128, 64, 64), 256: (2048, 1024, 512, 256, 128, 64, 64)}
# Noise#Planes without the leading 100, which is z itself (see `ConvGenerator`).
IMAGENET_NOISE = {128: (64, 32, 16, 8, 4), 256: (64, 32, 16, 8, 4, 2)}
IMAGENET_ENCODER = (64, 128, 256, 512)
IMAGENET_DECODER = (256, 128, 64)
IMAGENET_BINARY_D = IMAGENET_ENCODER  # Not in the paper (no ImageNet GAN baseline).


class ConvGenerator(nn.Module):
  """G: z -> image through "(n)4c" then "(n)4c2s" layers (App. C).

  Layer i of `features` is, for i = 0, the "(features[0])4c" projection of z seen as a
  [B, 1, 1, latent] map to 4x4 (a 4x4 'VALID' transposed convolution, i.e. a dense layer
  with a [4, 4, latent, n] kernel), and for i > 0 a "(features[i])4c2s" transposed
  convolution; each is followed by BN and ReLU. The output layer is "(C)4c2s" (DCGAN at
  64x64) or "(C)3c" (ImageNet), then tanh, without BN.

  Noise planes (App. C, ImageNet: "we feed noise into every layer of the generator where
  each noise component is initialized into a 4D tensor and concatenated with current feature
  maps"). The paper lists one more plane count than there are hidden layers to feed
  (100-64-32-16-8-4 for 128x128's six 4c/4c2s layers, 100-64-32-16-8-4-2 for 256x256's
  seven), and the 100 matches z's size, so we read the list as: the input of hidden layer 0
  is z itself (100 planes at 1x1) and hidden layer i > 0 receives `noise_planes[i - 1]`
  fresh standard-normal planes at its input resolution, concatenated to the features. The
  "(3)3c" output layer gets no noise. The noise is drawn from the 'noise' RNG stream.
  """
  features: Sequence[int]
  image_shape: Sequence[int]  # (H, W, C)
  output_layer: Literal['4c2s', '3c'] = '4c2s'
  noise_planes: Sequence[int] = ()  # Empty: no noise; else one entry per layer i > 0.
  transpose_impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    """Maps z [B, latent] to images [B, H, W, C] in [-1, 1]."""
    self._check_shapes()
    batch = z.shape[0]
    h = z.reshape(batch, 1, 1, z.shape[-1])  # [B, 1, 1, latent]
    for i, features in enumerate(self.features):
      if i == 0:
        h = nn.ConvTranspose(features, (PROJECTION_SIZE, PROJECTION_SIZE), padding='VALID',
                             use_bias=False, kernel_init=G_KERNEL_INIT, dtype=self.dtype,
                             name='conv_0')(h)  # [B, 4, 4, n]
      else:
        if self.noise_planes:
          h = self._concat_noise(h, self.noise_planes[i - 1])  # [B, h, w, n + planes]
        h = ConvTranspose2x(features, impl=self.transpose_impl, kernel_init=G_KERNEL_INIT,
                            use_bias=False, dtype=self.dtype,
                            name=f'conv_{i}')(h)  # [B, 2h, 2w, n]
      h = mlp.batch_norm(train, name=f'bn_{i}', dtype=self.dtype)(h)
      h = nn.relu(h)
    channels = self.image_shape[-1]
    if self.output_layer == '4c2s':
      h = ConvTranspose2x(channels, impl=self.transpose_impl, kernel_init=G_KERNEL_INIT,
                          dtype=self.dtype, name='output')(h)
    else:
      h = nn.Conv(channels, (3, 3), padding='SAME', kernel_init=G_KERNEL_INIT,
                  dtype=self.dtype, name='output')(h)
    return jnp.tanh(h).astype(jnp.float32)  # [B, H, W, C]

  def _concat_noise(self, h: jax.Array, planes: int) -> jax.Array:
    noise = jax.random.normal(self.make_rng('noise'), (*h.shape[:-1], planes))  # [B, h, w, p]
    return jnp.concatenate([h, noise.astype(h.dtype)], axis=-1)

  def _check_shapes(self) -> None:
    if len(self.features) < 1:
      raise ValueError('ConvGenerator needs at least the "4c" projection layer.')
    if self.noise_planes and len(self.noise_planes) != len(self.features) - 1:
      raise ValueError(f'ConvGenerator: {len(self.noise_planes)} noise plane counts for '
                       f'{len(self.features) - 1} 4c2s layers; give one per 4c2s layer.')
    if self.output_layer not in ('4c2s', '3c'):
      raise ValueError(f"output_layer must be '4c2s' or '3c', got {self.output_layer!r}.")
    size = PROJECTION_SIZE * 2**(len(self.features) - 1)
    size *= 2 if self.output_layer == '4c2s' else 1
    if tuple(self.image_shape[:2]) != (size, size):
      raise ValueError(f'This generator makes {size}x{size} images but image_shape is '
                       f'{tuple(self.image_shape)}; check config.image_size.')


class ConvAutoEncoder(nn.Module):
  """EBGAN's auto-encoder discriminator, D(x) = ||Dec(Enc(x)) - x|| (Eq. 13), convolutional.

  Encoder: "(n)4c2s" strided convolutions, the first (D's input layer) without BN, the others
  followed by BN; all followed by LeakyReLU. Decoder: "(n)4c2s" fractional-strided
  convolutions with BN and LeakyReLU, then a "(C)4c2s" output layer with BN only (App. C;
  see the module docstring).

  Returns the reconstruction and the encoder code S used by the pulling-away term (Eq. 14).
  """
  encoder_features: Sequence[int]
  decoder_features: Sequence[int]  # Hidden decoder layers; the "(C)4c2s" output is added.
  image_shape: Sequence[int]
  leaky_slope: float = LEAKY_SLOPE
  conv_impl: str = 'auto'
  transpose_impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Maps x [B, H, W, C] to (reconstruction [B, H, W, C], code [B, H/2^k, W/2^k, n_k])."""
    mlp._check_image_shape(x, self.image_shape, 'discriminator')
    if len(self.encoder_features) != len(self.decoder_features) + 1:
      raise ValueError('ConvAutoEncoder: the decoder must have one hidden layer fewer than the '
                       'encoder so that its output layer restores the input size.')
    h = x
    for i, features in enumerate(self.encoder_features):
      h = Conv2x(features, impl=self.conv_impl, kernel_init=D_KERNEL_INIT, dtype=self.dtype,
                 use_bias=i == 0, name=f'enc_conv_{i}')(h)  # [B, h/2, w/2, n]
      if i > 0:
        h = mlp.batch_norm(train, name=f'enc_bn_{i}', dtype=self.dtype)(h)
      h = nn.leaky_relu(h, self.leaky_slope)
    code = h  # [B, h, w, n]: the encoder output S.
    decoder = (*self.decoder_features, self.image_shape[-1])
    for i, features in enumerate(decoder):
      h = ConvTranspose2x(features, impl=self.transpose_impl, kernel_init=D_KERNEL_INIT,
                          use_bias=i == len(decoder) - 1, dtype=self.dtype,
                          name=f'dec_conv_{i}')(h)  # [B, 2h, 2w, n]
      if i < len(decoder) - 1:  # The output layer: no BN, no non-linearity (see mlp.py).
        h = mlp.batch_norm(train, name=f'dec_bn_{i}', dtype=self.dtype)(h)
        h = nn.leaky_relu(h, self.leaky_slope)
    return h.astype(jnp.float32), code.astype(jnp.float32)


class ConvDiscriminator(nn.Module):
  """Binary discriminator of the DCGAN baseline (Sec. 4.3): "(n)4c2s" layers, then a logit.

  The input layer has no BN, the other conv layers are followed by BN; all by LeakyReLU(0.2)
  (Radford et al., 2015). The logit layer is a Dense(1) on the flattened features, the same
  function (and parameter count) as DCGAN's final full-extent 4x4 'VALID' convolution; like
  DCGAN it has no BN (a BN on one logit would erase the real/fake offset between the
  separately fed batches, see `mlp.MLPDiscriminator`).
  """
  features: Sequence[int]
  image_shape: Sequence[int]
  leaky_slope: float = LEAKY_SLOPE
  conv_impl: str = 'auto'
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps x [B, H, W, C] to logits [B]."""
    mlp._check_image_shape(x, self.image_shape, 'discriminator')
    h = x
    for i, features in enumerate(self.features):
      h = Conv2x(features, impl=self.conv_impl, kernel_init=D_KERNEL_INIT, dtype=self.dtype,
                 use_bias=i == 0, name=f'conv_{i}')(h)  # [B, h/2, w/2, n]
      if i > 0:
        h = mlp.batch_norm(train, name=f'bn_{i}', dtype=self.dtype)(h)
      h = nn.leaky_relu(h, self.leaky_slope)
    h = h.reshape(h.shape[0], -1)  # [B, h * w * n]
    logit = nn.Dense(1, kernel_init=D_KERNEL_INIT, dtype=self.dtype, name='logit')(h)
    return logit[:, 0].astype(jnp.float32)
