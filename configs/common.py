"""Shared config defaults. Each experiment file starts from `base_config()` and overrides."""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'variant,flag,key=value' strings given after ':' in --config=file.py:arg.

  Bare words set a boolean default to True when they name one, or else the first
  string-valued default (the variant name). Values are converted to the default's type.
  """
  parsed = ml_collections.ConfigDict(defaults)
  if not arg:
    return parsed
  string_keys = [k for k, v in defaults.items() if isinstance(v, str)]
  for token in arg.split(','):
    token = token.strip()
    if not token:
      continue
    if '=' in token:
      key, value = token.split('=', 1)
    elif isinstance(defaults.get(token), bool):
      key, value = token, 'true'
    elif string_keys:
      key, value = string_keys[0], token
    else:
      raise ValueError(f'Cannot parse config argument {token!r}; known keys: {sorted(defaults)}')
    if key not in defaults:
      raise ValueError(f'Unknown config argument {key!r}; known keys: {sorted(defaults)}')
    default = defaults[key]
    if isinstance(default, bool):
      parsed[key] = value.lower() in ('1', 'true', 'yes')
    else:
      parsed[key] = type(default)(value)
  return parsed


def base_config() -> ml_collections.ConfigDict:
  """Defaults common to every experiment; see each field's comment."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: a tfds name ('mnist', 'fashion_mnist', ...), or 'mnist_10k' for the embedded digits.
  # `data_dir`, when set, is a folder of MNIST-format IDX files used instead of `dataset`.
  config.dataset = 'mnist_10k'
  config.data_dir = ''
  config.tfds_data_dir = ''  # Where tfds keeps prepared data; '' = tfds's default.
  config.image_size = 32     # App. D "Other details": the grid search pads MNIST to 32x32.
  config.channels = 1
  config.batch_size = 64     # Global batch, split across processes and devices.

  # Schedule: `total_steps` > 0 wins over `num_epochs`.
  config.num_epochs = 25
  config.total_steps = 0

  config.model = ml_collections.ConfigDict()
  config.model.family = 'mlp'
  config.model.latent_dim = 100  # The paper does not give z's size; 100 as in DCGAN.
  config.model.n_layer_g = 5
  config.model.size_g = 800
  config.model.n_layer_d = 2
  config.model.size_d = 1024
  config.model.dropout_d = False

  config.loss = ml_collections.ConfigDict()
  config.loss.kind = 'ebgan'          # 'ebgan' (Eqs. 1, 2) or 'gan' (binary cross-entropy).
  config.loss.margin = 10.0           # Sec. 4.1: m = 10 on MNIST, not tuned.
  config.loss.margin_decay_steps = 0  # > 0: linear decay of m to 0 over this many steps (App. D).
  config.loss.pt_weight = 0.0         # lambda_PT of Eq. (14); 0.1 for EBGAN-PT (App. C).

  config.optim = ml_collections.ConfigDict()
  config.optim.optim_d = 'adam'  # Table 1: optimD in {adam, sgd}.
  config.optim.optim_g = 'adam'  # Table 1: optimG in {adam, sgd}.
  config.optim.lr_d = 1e-3       # Table 1: lr; EBGANs use 0.001.
  config.optim.lr_g = 1e-3
  config.optim.b1 = 0.5          # Adam beta1 as in Radford et al. (2015), which App. C follows.
  config.optim.b2 = 0.999
  config.optim.lr_decay_start = 0  # > 0: linear learning-rate decay to 0 from this step on.

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.sample_every_steps = 1000
  config.keep_checkpoints = 3
  config.num_sample_images = 64
  return config
