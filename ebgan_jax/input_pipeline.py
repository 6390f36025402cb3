"""tfds split -> tf.data -> host-local numpy batches, NHWC float32 in [-1, 1].

Each process reads its own shard (`ds.shard(process_count, process_index)`) and yields
`batch_size // process_count` images per step; `sharding.global_batch` stitches the hosts'
pieces into one global array. The order of the data is a pure function of
(config.seed, epoch, process index): every epoch is shuffled with a seed derived from those,
so a run resumed at step s sees exactly the batches it would have seen without stopping.
"""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ebgan_jax import idx_dataset

EMBEDDED = 'mnist_10k'


def _mnist_like(config: ml_collections.ConfigDict) -> Callable[[dict], tf.Tensor]:
  """uint8 [28, 28, 1] -> float32 [S, S, 1] in [-1, 1]; S = 32 zero-pads (App. D), 28 keeps."""
  size = config.image_size
  if size not in (28, 32):
    raise ValueError(f'MNIST-like data is 28x28: config.image_size must be 28 (unpadded) or '
                     f'32 (zero-padded, as the grid search of Sec. 4.1 / App. D), got {size}.')
  if config.channels != 1:
    raise ValueError(f'MNIST-like data has 1 channel; set --config.channels=1 '
                     f'(got {config.channels}).')
  pad = (size - 28) // 2

  def preprocess(example: dict) -> tf.Tensor:
    image = tf.cast(example['image'], tf.float32) / 127.5 - 1.0  # [28, 28, 1] in [-1, 1]
    # Zero-padding of the raw digits: pixel 0 is -1 after scaling.
    return tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], constant_values=-1.0)

  return preprocess


# Datasets by name -> a function of the config returning the per-example preprocessing.
PREPROCESSORS: dict[str, Callable[[ml_collections.ConfigDict], Callable[[dict], tf.Tensor]]] = {
    EMBEDDED: _mnist_like,
    'mnist': _mnist_like,
    'fashion_mnist': _mnist_like,
}


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared tfds builder for `config.data_dir` (an IDX folder) or `config.dataset`."""
  tfds_dir = config.get('tfds_data_dir') or None
  if config.data_dir:
    return idx_dataset.idx_builder(config.data_dir, tfds_dir)
  if config.dataset == EMBEDDED:
    return idx_dataset.idx_builder(idx_dataset.EMBEDDED_MNIST_DIR, tfds_dir)
  if config.dataset not in PREPROCESSORS:
    raise ValueError(
        f'Unknown dataset {config.dataset!r}. Use one of {sorted(PREPROCESSORS)} '
        '(--config.dataset=NAME), or a folder of MNIST-format IDX files '
        '(--config.data_dir=PATH).')
  builder = tfds.builder(config.dataset, data_dir=tfds_dir)
  builder.download_and_prepare()  # A no-op once prepared; downloads when online.
  return builder


def _preprocessor(config: ml_collections.ConfigDict) -> Callable[[dict], tf.Tensor]:
  name = EMBEDDED if config.data_dir else config.dataset
  return PREPROCESSORS[name](config)


def _split_size(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Examples in `split`: from the prepared metadata, else from the dataset's cardinality.

  Under `tfds.testing.mock_data` `download_and_prepare` is a no-op, so `info.splits` is empty;
  the mocked dataset still declares its cardinality (`num_examples`).
  """
  if split in builder.info.splits:
    return builder.info.splits[split].num_examples
  cardinality = int(builder.as_dataset(split=split).cardinality())
  if cardinality < 0:
    raise ValueError(f'{builder.name} has no metadata for split {split!r} and its size is '
                     'unknown; prepare the dataset first.')
  return cardinality


def num_examples(config: ml_collections.ConfigDict, split: str = 'train') -> int:
  return _split_size(get_builder(config), split)


def steps_per_epoch(config: ml_collections.ConfigDict, process_count: int | None = None) -> int:
  """Steps in one pass over the train split (every process takes the same number)."""
  process_count = process_count or jax.process_count()
  local_batch = local_batch_size(config.batch_size, process_count)
  steps = (num_examples(config) // process_count) // local_batch
  if steps == 0:
    raise ValueError(f'The train split has {num_examples(config)} examples, fewer than one '
                     f'global batch of {config.batch_size}; lower --config.batch_size.')
  return steps


def local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f'Global batch {batch_size} is not divisible by the {process_count} '
                     'processes; choose a multiple.')
  return batch_size // process_count


def _epoch_seed(seed: int, epoch: int, process_index: int) -> int:
  return int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0] >> 1)


def train_batches(config: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[np.ndarray]:
  """Endless host-local train batches [batch_size // process_count, H, W, C], from `start_step`.

  Args:
    config: the experiment config (dataset, image size, batch size, seed).
    start_step: the global step of the first batch; earlier batches are skipped, so a resumed
      run continues the same data order.
    process_index, process_count: this host's shard; default to JAX's.
  Yields:
    float32 numpy arrays in [-1, 1].
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = process_count or jax.process_count()
  builder = get_builder(config)
  local_batch = local_batch_size(config.batch_size, process_count)
  per_epoch = steps_per_epoch(config, process_count)
  examples_per_epoch = per_epoch * local_batch

  ds = builder.as_dataset(split='train', shuffle_files=False)
  ds = ds.shard(process_count, process_index)
  ds = ds.map(_preprocessor(config), num_parallel_calls=tf.data.AUTOTUNE)
  if config.get('cache', True):
    ds = ds.cache()
  buffer = config.get('shuffle_buffer', 0) or _split_size(builder, 'train')

  epoch, skip = divmod(start_step, per_epoch)
  while True:
    epoch_ds = ds.shuffle(buffer, seed=_epoch_seed(config.seed, epoch, process_index),
                          reshuffle_each_iteration=False)
    epoch_ds = epoch_ds.take(examples_per_epoch).skip(skip * local_batch)
    epoch_ds = epoch_ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from epoch_ds.as_numpy_iterator()
    epoch, skip = epoch + 1, 0


def split_arrays(config: ml_collections.ConfigDict,
                 split: str = 'test') -> tuple[np.ndarray, np.ndarray]:
  """A whole split as (images [N, H, W, C] float32 in [-1, 1], labels [N] int32), in order.

  For evaluation, classifier training and the semi-supervised experiment on small datasets.
  """
  ds = get_builder(config).as_dataset(split=split, shuffle_files=False)
  preprocess = _preprocessor(config)
  ds = ds.map(lambda ex: (preprocess(ex), tf.cast(ex['label'], tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  images, labels = zip(*ds.as_numpy_iterator())
  return np.concatenate(images), np.concatenate(labels)
