"""Model families, picked by `config.model.family`.

Every family provides three constructors taking the whole config:
- `generator(config)`: an `nn.Module` with `__call__(z, *, train) -> images [B, H, W, C]`;
- `autoencoder(config)`: EBGAN's discriminator, `__call__(x, *, train) -> (x_rec, code)`;
- `binary_discriminator(config)`: the GAN/DCGAN baseline, `__call__(x, *, train) -> logits [B]`.
A module that needs randomness besides dropout (the ImageNet generator's noise planes) draws
it from the `'noise'` RNG stream, which the train step always provides.

Families: 'mlp' (Sec. 4.1, Table 1), 'dcgan64' (64x64 LSUN/CelebA, Sec. 4.3) and 'imagenet'
(128x128 or 256x256 after `config.image_size`, Sec. 4.4); the last two are in `dcgan.py`.
Optional `config.model` fields the convolutional families read (`config.model.get`):
- `width_mult` (1.0): scales every hidden channel count of App. C's tables (not the image
  channels nor the noise planes); tests use small values for tiny models.
- `dtype` ('float32'): compute dtype, 'float32' or 'bfloat16'; parameters stay float32.
  'auto' is bfloat16 when JAX's default backend is a TPU or GPU, else float32.
- `transpose_impl` ('auto'), `conv_impl` ('auto'): lowerings of the "4c2s" layers, see
  `conv_transpose.py`.
- `leaky_slope_d` (0.2): LeakyReLU slope in D (Radford et al., 2015); 0 gives ReLU.
"""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ebgan_jax.models import dcgan, mlp


def _mlp_generator(config: ml_collections.ConfigDict) -> nn.Module:
  return mlp.MLPGenerator(n_layers=config.model.n_layer_g, width=config.model.size_g,
                          image_shape=image_shape(config))


def _mlp_autoencoder(config: ml_collections.ConfigDict) -> nn.Module:
  return mlp.MLPAutoEncoder(n_layers=config.model.n_layer_d, width=config.model.size_d,
                            image_shape=image_shape(config), dropout=config.model.dropout_d)


def _mlp_binary(config: ml_collections.ConfigDict) -> nn.Module:
  return mlp.MLPDiscriminator(n_layers=config.model.n_layer_d, width=config.model.size_d,
                              image_shape=image_shape(config), dropout=config.model.dropout_d)


def _widths(config: ml_collections.ConfigDict, channels: tuple[int, ...]) -> tuple[int, ...]:
  mult = config.model.get('width_mult', 1.0)
  return tuple(max(1, round(c * mult)) for c in channels)


def _dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  name = config.model.get('dtype', 'float32')
  if name == 'auto':  # Mixed precision on accelerators; CPUs gain nothing from bfloat16.
    name = 'bfloat16' if jax.default_backend() in ('tpu', 'gpu') else 'float32'
  if name not in ('float32', 'bfloat16'):
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {name!r}.")
  return jnp.dtype(name)


def _imagenet_size(config: ml_collections.ConfigDict) -> int:
  if config.image_size not in dcgan.IMAGENET_G:
    raise ValueError(f'The imagenet family has models for image_size in '
                     f'{sorted(dcgan.IMAGENET_G)} (App. C), got {config.image_size}.')
  return config.image_size


def _conv_generator(config: ml_collections.ConfigDict, features: tuple[int, ...],
                    output_layer: str, noise_planes: tuple[int, ...] = ()) -> nn.Module:
  return dcgan.ConvGenerator(features=_widths(config, features), image_shape=image_shape(config),
                             output_layer=output_layer, noise_planes=noise_planes,
                             transpose_impl=config.model.get('transpose_impl', 'auto'),
                             dtype=_dtype(config))


def _conv_autoencoder(config: ml_collections.ConfigDict, encoder: tuple[int, ...],
                      decoder: tuple[int, ...]) -> nn.Module:
  return dcgan.ConvAutoEncoder(encoder_features=_widths(config, encoder),
                               decoder_features=_widths(config, decoder),
                               image_shape=image_shape(config),
                               leaky_slope=config.model.get('leaky_slope_d', dcgan.LEAKY_SLOPE),
                               conv_impl=config.model.get('conv_impl', 'auto'),
                               transpose_impl=config.model.get('transpose_impl', 'auto'),
                               dtype=_dtype(config))


def _conv_binary(config: ml_collections.ConfigDict, features: tuple[int, ...]) -> nn.Module:
  return dcgan.ConvDiscriminator(features=_widths(config, features),
                                 image_shape=image_shape(config),
                                 leaky_slope=config.model.get('leaky_slope_d', dcgan.LEAKY_SLOPE),
                                 conv_impl=config.model.get('conv_impl', 'auto'),
                                 dtype=_dtype(config))


FAMILIES: dict[str, types.SimpleNamespace] = {
    'mlp': types.SimpleNamespace(generator=_mlp_generator, autoencoder=_mlp_autoencoder,
                                 binary_discriminator=_mlp_binary),
    'dcgan64': types.SimpleNamespace(
        generator=lambda c: _conv_generator(c, dcgan.DCGAN64_G, '4c2s'),
        autoencoder=lambda c: _conv_autoencoder(c, dcgan.DCGAN64_ENCODER, dcgan.DCGAN64_DECODER),
        binary_discriminator=lambda c: _conv_binary(c, dcgan.DCGAN64_BINARY_D)),
    'imagenet': types.SimpleNamespace(
        generator=lambda c: _conv_generator(c, dcgan.IMAGENET_G[_imagenet_size(c)], '3c',
                                            dcgan.IMAGENET_NOISE[_imagenet_size(c)]),
        autoencoder=lambda c: _conv_autoencoder(c, dcgan.IMAGENET_ENCODER,
                                                dcgan.IMAGENET_DECODER),
        binary_discriminator=lambda c: _conv_binary(c, dcgan.IMAGENET_BINARY_D)),
}


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the images the models produce and consume."""
  return (config.image_size, config.image_size, config.channels)


def _family(config: ml_collections.ConfigDict) -> types.SimpleNamespace:
  name = config.model.family
  if name not in FAMILIES:
    raise ValueError(f'Unknown model family {name!r}; config.model.family must be one of '
                     f'{sorted(FAMILIES)}.')
  return FAMILIES[name]


def get_generator(config: ml_collections.ConfigDict) -> nn.Module:
  """The generator G of `config.model.family`."""
  return _family(config).generator(config)


def get_discriminator(config: ml_collections.ConfigDict) -> nn.Module:
  """D: the auto-encoder for EBGAN (`config.loss.kind == 'ebgan'`), else the binary one."""
  family = _family(config)
  kind = config.loss.kind
  if kind == 'ebgan':
    return family.autoencoder(config)
  if kind == 'gan':
    return family.binary_discriminator(config)
  raise ValueError(f"Unknown config.loss.kind {kind!r}; use 'ebgan' or 'gan'.")
