"""Datasets that fit in host memory, served with numpy: IDX folders and .npz files.

No TensorFlow. A split is read once per process into uint8 arrays (the embedded 8,000 digits
are 6 MB; MNIST's 60,000, 47 MB) and each batch is gathered, padded and scaled on the fly.

Order. Epoch e of the train split is the permutation `default_rng([seed, e])` of its N
examples, cut into N // B global batches of B = `config.batch_size` (the remainder is
dropped). Global step s takes batch s mod (N // B) of epoch s // (N // B), and process p of
P takes its contiguous B / P of it. The batches are thus a pure function of (seed, step):
a run resumed at step s, on any number of processes, sees the global batches it would have
seen without stopping.

Sources (`config.data_dir`):
- a folder of MNIST-format IDX files (`ebgan_jax.data.idx`); '' with `config.dataset =
  'mnist_10k'` is the embedded digits;
- an `.npz` file with `train_images` and `test_images` (uint8 [N, H, W] or [N, H, W, C]) and
  optionally `train_labels` / `test_labels` (int [N]; without them labels are -1).
Images of 28x28x1 (MNIST-like) are zero-padded to `image_size` 32 (App. D) or kept at 28;
any other images must already be `image_size` square, with `config.channels` channels.
"""

from __future__ import annotations

import functools
import io
from typing import Iterator

import ml_collections
import numpy as np

from ebgan_jax import paths
from ebgan_jax.data import idx

EMBEDDED = 'mnist_10k'
BACKGROUND = -1.0  # MNIST's pixel 0 scaled to [-1, 1]: the zero padding.


def source(config: ml_collections.ConfigDict) -> str:
  """The IDX folder or .npz file `config` reads: `data_dir`, or the embedded digits."""
  return str(config.data_dir) if config.data_dir else str(idx.EMBEDDED_MNIST_DIR)


@functools.lru_cache(maxsize=8)
def _load(location: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images [N, H, W, C], int32 labels [N]) of `split` at `location`, read-only."""
  if location.endswith('.npz'):
    path = paths.as_path(location)
    if not path.exists():
      raise FileNotFoundError(f'{path} does not exist (--config.data_dir).')
    with np.load(io.BytesIO(path.read_bytes())) as data:
      if f'{split}_images' not in data.files:
        raise KeyError(f'{path} has no {split}_images array (it has {sorted(data.files)}); an '
                       '.npz dataset holds train_images and test_images, uint8 [N, H, W(, C)], '
                       'and optionally train_labels and test_labels.')
      images = np.asarray(data[f'{split}_images'])
      labels = (np.asarray(data[f'{split}_labels']).astype(np.int32)
                if f'{split}_labels' in data.files else np.full(len(images), -1, np.int32))
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
      raise ValueError(f'{path}: {split}_images must be uint8 [N, H, W] or [N, H, W, C], got '
                       f'{images.dtype} {images.shape}.')
    if images.ndim == 3:
      images = images[..., None]
    if len(labels) != len(images):
      raise ValueError(f'{path}: {len(images)} {split}_images but {len(labels)} labels.')
  else:
    images, labels = idx.read_idx_split(location, split)
    labels = labels.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def raw_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """`split` as stored: (uint8 images [N, h, w, c], int32 labels [N])."""
  return _load(source(config), split)


def _padding(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> int:
  """Pixels of zero padding on each side to bring images of `shape` [h, w, c] to the config's."""
  h, w, c = shape
  size = config.image_size
  if c != config.channels:
    raise ValueError(f'{source(config)} has {c}-channel images; set --config.channels={c} '
                     f'(got {config.channels}).')
  if (h, w, c) == (28, 28, 1) and size in (28, 32):
    return (size - 28) // 2  # MNIST-like: zero-padded to 32x32 (App. D), or kept at 28.
  if h == w == size:
    return 0
  if (h, w, c) == (28, 28, 1):
    raise ValueError(f'MNIST-like data is 28x28: config.image_size must be 28 (unpadded) or 32 '
                     f'(zero-padded, as the grid search of Sec. 4.1 / App. D), got {size}.')
  raise ValueError(f'{source(config)} holds {h}x{w} images but config.image_size is {size}; '
                   'resize the arrays beforehand or set --config.image_size.')


def to_model_input(config: ml_collections.ConfigDict, images: np.ndarray) -> np.ndarray:
  """uint8 [B, h, w, c] -> float32 [B, S, S, c] in [-1, 1], zero-padded where MNIST-like."""
  pad = _padding(config, images.shape[1:])
  out = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  if pad:
    out = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=BACKGROUND)
  return out


def num_examples(config: ml_collections.ConfigDict, split: str = 'train') -> int:
  return len(raw_split(config, split)[1])


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  """Global batches in one pass over the train split (the remainder is dropped)."""
  n = num_examples(config)
  if n < config.batch_size:
    raise ValueError(f'The train split has {n} examples, fewer than one global batch of '
                     f'{config.batch_size}; lower --config.batch_size.')
  return n // config.batch_size


def epoch_permutation(seed: int, epoch: int, num: int) -> np.ndarray:
  """The order of epoch `epoch`: a permutation of range(num), a function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(num)


def _local_part(config: ml_collections.ConfigDict, position: int, process_index: int,
                process_count: int) -> slice:
  """Process `process_index`'s part of the `position`-th global batch of an epoch's order."""
  local = config.batch_size // process_count
  start = position * config.batch_size + process_index * local
  return slice(start, start + local)


def batch_indices(config: ml_collections.ConfigDict, step: int, process_index: int = 0,
                  process_count: int = 1) -> np.ndarray:
  """Indices into the train split of process `process_index`'s part of global batch `step`."""
  epoch, position = divmod(step, steps_per_epoch(config))
  order = epoch_permutation(config.seed, epoch, num_examples(config))
  return order[_local_part(config, position, process_index, process_count)]


def train_batches(config: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
  """Endless host-local batches [batch_size // process_count, S, S, C] from `start_step`."""
  images, _ = raw_split(config, 'train')
  to_model_input(config, images[:1])  # Fails here, naming the fix, for a mismatched size.
  per_epoch = steps_per_epoch(config)
  epoch, position = divmod(start_step, per_epoch)
  while True:
    order = epoch_permutation(config.seed, epoch, len(images))
    for p in range(position, per_epoch):
      yield to_model_input(config, images[order[_local_part(config, p, process_index,
                                                             process_count)]])
    epoch, position = epoch + 1, 0


def split_arrays(config: ml_collections.ConfigDict,
                 split: str = 'test') -> tuple[np.ndarray, np.ndarray]:
  """A whole split as (float32 images [N, S, S, C] in [-1, 1], int32 labels [N]), in order."""
  images, labels = raw_split(config, split)
  return to_model_input(config, images), np.array(labels)
