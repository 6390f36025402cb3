"""Model families, picked by `config.model.family`.

Every family provides three constructors taking the whole config:
- `generator(config)`: an `nn.Module` with `__call__(z, *, train) -> images [B, H, W, C]`;
- `autoencoder(config)`: EBGAN's discriminator, `__call__(x, *, train) -> (x_rec, code)`;
- `binary_discriminator(config)`: the GAN/DCGAN baseline, `__call__(x, *, train) -> logits [B]`.
A module that needs randomness besides dropout (the ImageNet generator's noise planes) draws
it from the `'noise'` RNG stream, which the train step always provides.
"""

from __future__ import annotations

import types

import flax.linen as nn
import ml_collections

from ebgan_jax.models import mlp


def _mlp_generator(config: ml_collections.ConfigDict) -> nn.Module:
  return mlp.MLPGenerator(n_layers=config.model.n_layer_g, width=config.model.size_g,
                          image_shape=image_shape(config))


def _mlp_autoencoder(config: ml_collections.ConfigDict) -> nn.Module:
  return mlp.MLPAutoEncoder(n_layers=config.model.n_layer_d, width=config.model.size_d,
                            image_shape=image_shape(config), dropout=config.model.dropout_d)


def _mlp_binary(config: ml_collections.ConfigDict) -> nn.Module:
  return mlp.MLPDiscriminator(n_layers=config.model.n_layer_d, width=config.model.size_d,
                              image_shape=image_shape(config), dropout=config.model.dropout_d)


FAMILIES: dict[str, types.SimpleNamespace] = {
    'mlp': types.SimpleNamespace(generator=_mlp_generator, autoencoder=_mlp_autoencoder,
                                 binary_discriminator=_mlp_binary),
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
