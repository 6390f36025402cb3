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

  # Precision of the train step's fp32 matmuls: 'default' (JAX's), 'tensorfloat32',
  # 'bfloat16', 'float32'/'highest'. A speed option that changes the numerics (the paper
  # trained in fp32); see ebgan_jax.step.matmul_precision.
  config.matmul_precision = 'default'
  # Train steps per jitted call (one lax.scan over that many batches; calls stop at every log,
  # checkpoint and sample step). Speed only: the same steps and results. A small step is bound
  # by the host work around it (dispatch, the next batch), a large one is not.
  config.steps_per_call = 1
  # Also log the global norms of D's and G's gradients (train/d_grad_norm, g_grad_norm). A
  # diagnostic beyond the paper, off by default: one more pass over every gradient costs
  # 6-15% of a fully-connected step on a CPU (BENCHMARKS.md).
  config.grad_norm_metrics = False

  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.sample_every_steps = 1000
  config.keep_checkpoints = 3
  config.num_sample_images = 64

  # Scores while training (ebgan_jax.evaluator), every `eval_every_steps` (0: never), from
  # `eval.num_samples` generated images drawn from one fixed key: with App. C's offline
  # classifier on MNIST-like data, with the FID Inception network when `inception_weights`
  # is set on the others. Beyond the paper, which scores once at the end.
  config.eval_every_steps = 0
  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 10000
  config.eval.batch_size = 500           # Images generated per call.
  # The offline classifier (App. C): trained once per dataset and these settings, and kept in
  # a cache shared by every run ('' = $EBGAN_JAX_CACHE or ~/.cache/ebgan_jax; may be gs://).
  config.eval.classifier_epochs = 5
  config.eval.classifier_batch_size = 128
  config.eval.classifier_train_examples = 0  # 0: the whole train split (App. C).
  config.eval.classifier_seed = 0
  config.eval.classifier_cache_dir = ''
  # Keep the checkpoint with the best value of this score beside the newest ones ('' = no),
  # e.g. 'eval/classifier_fid' (lower is better; I', IS, precision, recall: higher).
  config.eval.best_metric = ''
  return config


def conv_config(arg: ml_collections.ConfigDict, *, dataset: str, family: str, image_size: int,
                margin: float, tiny_width_mult: float) -> ml_collections.ConfigDict:
  """The deep convolutional experiments of Sec. 4.3, 4.4 (App. C): shared settings.

  `arg` (from `parse_arg`) holds `variant` ('ebgan', 'ebgan_pt' or 'dcgan') and `tiny`.
  - Optimizer: App. C says these models "followed the guidance suggested by Radford et al.
    (2015)": Adam, learning rate 0.0002, beta1 0.5, batch 64 for both players.
  - `ebgan`: the auto-encoder D with `margin` (the paper's m for the dataset); `ebgan_pt`: the
    same with lambda_PT = 0.1 (App. C); `dcgan`: the binary D with the GAN loss (the baseline
    of Figures 5, 6, 11).
  - Compute dtype 'auto': bfloat16 on TPU/GPU, float32 on CPU (parameters, optimizer states,
    energies and losses stay float32).
  - Generator EMA off (`ema_decay = 0`; beyond the paper: e.g. 0.999 for samples and scores).
  - `tiny`: a width multiplier `tiny_width_mult`, batch 4, 3 steps, for tests on mock data.
  The paper gives no training length; `num_epochs` is each config's choice.
  """
  config = base_config()
  config.dataset = dataset
  config.image_size = image_size
  config.channels = 3
  config.batch_size = 64         # Radford et al. (2015): mini-batch 64.
  config.cache = False           # These datasets do not fit in host memory as float32.
  config.shuffle_buffer = 10_000  # A window shuffle; the full datasets are too large to hold.
  config.image_folder = ''       # A folder of JPEG/PNG files to train on instead of `dataset`.
  config.center_crop = 0         # input_pipeline: side of the central square (0: shorter side).
  config.resize_size = 0         # input_pipeline: resize the square to this (0: image_size).
  config.random_crop = False     # input_pipeline: random image_size crops per epoch (App. F).
  config.ema_decay = 0.0         # Generator EMA (beyond the paper); 0 = off.
  config.inception_weights = ''  # FID Inception weights file (ebgan_jax/inception.py).

  model = config.model
  model.family = family
  model.latent_dim = 100         # z in R^100: the first noise-plane count of App. C (ImageNet).
  model.width_mult = 1.0
  model.dtype = 'auto'           # 'auto' | 'float32' | 'bfloat16': the compute dtype.

  config.optim.optim_d = config.optim.optim_g = 'adam'
  config.optim.lr_d = config.optim.lr_g = 2e-4  # Radford et al. (2015).
  config.optim.b1, config.optim.b2 = 0.5, 0.999

  if arg.variant in ('ebgan', 'ebgan_pt'):
    config.loss.kind = 'ebgan'
    config.loss.margin = margin
    config.loss.pt_weight = 0.1 if arg.variant == 'ebgan_pt' else 0.0  # App. C: lambda_PT
  elif arg.variant == 'dcgan':
    config.loss.kind = 'gan'
    config.loss.margin = 0.0
    config.loss.pt_weight = 0.0
  else:
    raise ValueError(f"Unknown variant {arg.variant!r}: use 'ebgan', 'ebgan_pt' or 'dcgan'.")

  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.sample_every_steps = 2000
  # FID and KID every 2,000 steps when --config.inception_weights is set; the best FID's
  # checkpoint is kept (beyond the paper, which judges these by eye and the inception score).
  config.eval_every_steps = 2000
  config.eval.best_metric = 'eval/fid'
  if arg.tiny:
    model.width_mult = tiny_width_mult
    model.dtype = 'float32'
    config.batch_size = 4
    config.total_steps = 3
    config.shuffle_buffer = 16
    config.log_every_steps = 1
    config.checkpoint_every_steps = 3
    config.sample_every_steps = 3
    config.num_sample_images = 4
  return config
