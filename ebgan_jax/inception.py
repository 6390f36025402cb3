"""FID (Heusel et al., 2017) with the FID Inception-v3 network in flax, from a local weights file.

The paper judges its 64x64 and ImageNet generations by eye and by the inception score; FID is
how these datasets are judged today, so the deep convolutional runs can report it (beyond the
paper). Nothing is downloaded at run time: the user supplies the weights.

The network is the one every published FID uses: TensorFlow's 2015 Inception-v3 graph
(`pool_3`, 2048 features), as ported to PyTorch by `mseitzer/pytorch-fid` (its
`FIDInceptionA/C/E_1/E_2` blocks: average pools that exclude the padding, and a max pool in
the last block). We write it in flax rather than depend on a JAX FID package: the one we
looked at (`fidjax`) fetches its weights from a URL at first use and is not installed here;
the network is a few dozen lines, and this way the weights format is the de-facto standard
file, pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, converted to .npz with no
renaming:

    python -c "import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth'); \
               np.savez('inception_fid.npz', **{k: v.numpy() for k, v in sd.items()})"

(a .pkl of the same flat {name: array} dict works too). Keys are the PyTorch names, e.g.
`Mixed_5b.branch5x5_1.conv.weight` ([out, in, kh, kw]) and `Mixed_5b.branch5x5_1.bn.
running_var`; unused keys (the classifier `fc.*`, `num_batches_tracked`) are ignored.

A trained run's FID against its training data (real images from the train split, as usual for
LSUN and CelebA; the generator's EMA params when the run keeps them):

    python -m ebgan_jax.inception --workdir=DIR --weights=inception_fid.npz --num=10000

(`--weights` defaults to the run's `config.inception_weights`).

Preprocessing as pytorch-fid: images in [-1, 1] are resized to 299x299 (bilinear, no
antialiasing, half-pixel centres as PyTorch's `align_corners=False`); the network sees [-1, 1].
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ebgan_jax import data, paths, sample, scores

INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # The smallest input the network's valid convolutions and pools accept.
FEATURES = 2048
BN_EPSILON = 1e-3  # TF's Inception-v3 (pytorch-fid's BasicConv2d: eps=0.001).
WEIGHTS_HELP = ("The weights are pytorch-fid's pt_inception-2015-12-05-6726825d.pth (from "
                'https://github.com/mseitzer/pytorch-fid/releases), converted to .npz with the '
                'one-line command in the docstring of ebgan_jax/inception.py; nothing is '
                'downloaded at run time.')


class BasicConv(nn.Module):
  """Convolution without bias, BatchNorm (inference statistics), ReLU."""
  features: int
  kernel: Sequence[int]
  strides: int = 1
  padding: Sequence[int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, tuple(self.kernel), strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name='bn')(x)
    return nn.relu(x)


def _avg_pool(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, the padding excluded from the mean (pytorch-fid's FID blocks)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool(x: jax.Array, strides: int = 2, pad: int = 0) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name='branch1x1')(x)
    b5 = BasicConv(48, (1, 1), name='branch5x5_1')(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = BasicConv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  c7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.c7
    b1 = BasicConv(192, (1, 1), name='branch1x1')(x)
    b7 = BasicConv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, (1, 1), name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name='branch3x3_1')(x)
    b3 = BasicConv(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  max_pool: bool  # pytorch-fid: FIDInceptionE_1 averages (padding excluded), E_2 max-pools.

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name='branch1x1')(x)
    b3 = BasicConv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], -1)
    bd = BasicConv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)],
                         -1)
    pooled = _max_pool(x, strides=1, pad=1) if self.max_pool else _avg_pool(x)
    bp = BasicConv(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3 up to `pool_3`: images [B, H, W, 3] in [-1, 1] -> features [B, 2048].

  Module names follow torchvision/pytorch-fid, so a PyTorch state dict maps onto the params
  by name (`load_variables`). Inputs are used at their size (`preprocess` resizes to 299).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = BasicConv(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)  # [B, 149, 149, 32]
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)              # [B, 147, 147, 32]
    x = BasicConv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool(x)                                                # [B, 73, 73, 64]
    x = BasicConv(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x)             # [B, 71, 71, 192]
    x = _max_pool(x)                                                # [B, 35, 35, 192]
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)                          # [B, 35, 35, 288]
    x = InceptionB(name='Mixed_6a')(x)                              # [B, 17, 17, 768]
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)                              # [B, 8, 8, 1280]
    x = InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)               # [B, 8, 8, 2048]
    return jnp.mean(x, axis=(1, 2))                                 # [B, 2048]


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """Images [B, H, W, 3 or 1] in [-1, 1] (or uint8 in [0, 255]) -> float32 [B, size, size, 3].

  Bilinear resize without antialiasing (PyTorch's `F.interpolate(..., mode='bilinear',
  align_corners=False)`, as pytorch-fid), in [-1, 1]. Grey images (the MNIST runs) are
  repeated to three channels, as FIDs of grey digits usually are.
  """
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1.0
  images = images.astype(jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  if images.shape[1:3] != (size, size):
    images = jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]),
                              method='bilinear', antialias=False)
  return images


def _read_flat(path: paths.PathLike) -> dict[str, np.ndarray]:
  path = paths.as_path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f'Inception weights {str(path)!r} not found. {WEIGHTS_HELP}')
  with path.open('rb') as f:
    if path.suffix == '.npz':
      with np.load(f) as data:
        return {k: np.asarray(data[k]) for k in data.files}
    return {k: np.asarray(v) for k, v in pickle.load(f).items()}


def load_variables(path: paths.PathLike) -> dict[str, Any]:
  """{'params', 'batch_stats'} of `InceptionV3` from a flat PyTorch-named .npz/.pkl file.

  Raises a ValueError naming the missing or misshapen weights when the file does not match.
  """
  flat = _read_flat(path)
  target = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3)))
  torch_names = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                 'var': 'running_var'}
  out, missing = {}, []
  for collection, tree in target.items():
    leaves = {}
    for key_path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
      name = '.'.join((*key_path[:-1], torch_names[key_path[-1]]))
      if name not in flat:
        missing.append(name)
        continue
      value = flat[name].astype(np.float32)
      if key_path[-1] == 'kernel':
        value = value.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]
      if value.shape != leaf.shape:
        raise ValueError(f'{path}: {name} has shape {value.shape} (after transposing), the '
                         f'network needs {leaf.shape}.')
      leaves[key_path] = jnp.asarray(value)
    out[collection] = flax.traverse_util.unflatten_dict(leaves)
  if missing:
    raise ValueError(f'{path} lacks {len(missing)} Inception weights, e.g. {missing[:3]}; it '
                     'must hold pytorch-fid\'s FID Inception state dict.')
  return out


def init_variables(seed: int = 0) -> dict[str, Any]:
  """Random {'params', 'batch_stats'}, for tests (not for scores): He-normal kernels, so the
  activations keep their scale through the ReLUs; BN as the identity. Built with numpy from
  the abstract shapes (no compile)."""
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                          jnp.zeros((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3)))
  rng = np.random.RandomState(seed)

  def fill(key_path, leaf):
    name = key_path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def save_variables(variables: dict[str, Any], path: paths.PathLike) -> None:
  """Writes `variables` as a PyTorch-named .npz (the inverse of `load_variables`)."""
  torch_names = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                 'var': 'running_var'}
  flat = {}
  for tree in variables.values():
    for key_path, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items():
      value = np.asarray(leaf)
      if key_path[-1] == 'kernel':
        value = value.transpose(3, 2, 0, 1)
      flat['.'.join((*key_path[:-1], torch_names[key_path[-1]]))] = value
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  paths.write_atomic(path, buffer.getvalue())


class FeatureExtractor:
  """Inception pool_3 features of image batches, jitted; `variables` from `load_variables`."""

  def __init__(self, variables: dict[str, Any], batch_size: int = 200,
               input_size: int = INPUT_SIZE):
    self.variables = variables
    self.batch_size = batch_size
    net = InceptionV3()
    self._apply = jax.jit(lambda v, x: net.apply(v, preprocess(x, input_size)))

  @classmethod
  def from_file(cls, path: paths.PathLike, **kwargs) -> 'FeatureExtractor':
    return cls(load_variables(path), **kwargs)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """images [N, H, W, 3] (uint8, or floats in [-1, 1]) -> float64 features [N, 2048]."""
    out = []
    for start in range(0, len(images), self.batch_size):
      batch = np.asarray(images[start:start + self.batch_size])
      if batch.dtype == np.uint8:  # On the host: uint8 and float inputs share one compile.
        batch = batch.astype(np.float32) / 127.5 - 1.0
      n = len(batch)
      if n < self.batch_size:  # Pad the last batch: one compiled shape.
        batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, axis=0)])
      out.append(np.asarray(self._apply(self.variables, batch))[:n])
    return np.concatenate(out).astype(np.float64)


def fid(features1: np.ndarray, features2: np.ndarray) -> float:
  """FID between two sets of Inception features [N1, D] and [N2, D], in float64.

  The Gaussian fits and the Frechet distance are `scores.feature_statistics` and
  `scores.frechet_distance` (symmetric eigendecompositions, exact for the singular
  covariances of N < D samples), run with 64-bit floats enabled: float32 loses ~1e-3 of the
  traces on rank-deficient covariances. The second covariance enters through its factor
  (`scores.covariance_factor`): for N2 <= D the centred features, so the eigenvalues taken
  are those of an [N2, N2] matrix instead of two [D, D] ones (seconds on a CPU for D = 2048).
  """
  with jax.enable_x64(True):
    features2 = jnp.asarray(features2, jnp.float64)
    stats1 = scores.feature_statistics(jnp.asarray(features1, jnp.float64))
    stats2 = scores.feature_statistics(features2)
    factor2 = scores.covariance_factor(stats2[1], features2)
    return float(scores.frechet_distance(*stats1, *stats2, factor2=factor2))


def fid_of_run(workdir: paths.PathLike, weights: str = '', num: int = 10_000,
               latent_seed: int = -1, batch_size: int = 200, input_size: int = INPUT_SIZE,
               checkpoint: str = 'latest') -> tuple[float, int]:
  """(FID of `num` generated images against `num` train images, the checkpoint's step).

  `weights` defaults to the run's `config.inception_weights`. `input_size` other than 299
  (the FID's) is for tests only. `checkpoint`: 'latest', 'best' or a step. `latent_seed`
  -1 (default): the run's evaluation latents, as `ebgan_jax.sample` and `ebgan_jax.evaluate`.
  """
  trainer, state, restored_step = sample.load_generator(workdir, checkpoint)
  config = trainer.config
  weights = weights or config.get('inception_weights', '')
  if not weights:
    raise ValueError(f'No Inception weights: pass --weights=FILE.npz or set '
                     f'config.inception_weights. {WEIGHTS_HELP}')
  extractor = FeatureExtractor.from_file(weights, batch_size=batch_size, input_size=input_size)
  from ebgan_jax import evaluator  # pylint: disable=g-import-not-at-top (it imports this)
  key = evaluator.eval_key(config) if latent_seed < 0 else jax.random.key(latent_seed)
  fake = extractor(sample.generate_images(trainer, state, num, key))
  real_batches = data.train_batches(config, process_index=0, process_count=1)
  real, count = [], 0
  while count < num:
    batch = next(real_batches)
    real.append(extractor(batch))
    count += len(batch)
  return fid(np.concatenate(real)[:num], fake), restored_step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  value, restored_step = fid_of_run(FLAGS.workdir, FLAGS.weights, FLAGS.num_samples,
                                    FLAGS.latent_seed, checkpoint=FLAGS.checkpoint)
  print(f'FID ({FLAGS.num_samples} images, checkpoint step {restored_step}): {value:.3f}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run (local or gs://).',
                      required=True)
  flags.DEFINE_string('weights', '', 'FID Inception weights (.npz or .pkl with PyTorch names; '
                      'default config.inception_weights). ' + WEIGHTS_HELP)
  flags.DEFINE_string('checkpoint', 'latest', 'Which checkpoint: latest, best or a step.')
  flags.DEFINE_integer('num_samples', 10_000, 'Number of generated and of real images.')
  flags.DEFINE_integer('latent_seed', -1, "Seed of the latents; -1: the run's evaluation "
                       'latents (as ebgan_jax.sample and ebgan_jax.evaluate).')
  FLAGS = flags.FLAGS
  app.run(main)
