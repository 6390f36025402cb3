"""The input data of every experiment: one interface, two paths.

- In memory (`arrays.py`, numpy only): MNIST-format IDX folders (the embedded digits
  `mnist_10k`, Fashion-MNIST, any `--config.data_dir=FOLDER`) and `.npz` files
  (`--config.data_dir=FILE.npz`). TensorFlow is never imported for them, so the MNIST
  experiments (the demo, the grid, Table 2, the scores) run on hosts without it.
- tf.data (`tfds_pipeline.py`, which imports TensorFlow and tfds when first used): tfds
  datasets (`mnist`, `fashion_mnist`, `celeb_a`, `lsun/bedroom`, `imagenet2012`,
  `imagenet2012_dogs`) and folders of JPEG/PNG images (`--config.image_folder`).
Both yield host-local float32 NHWC batches in [-1, 1] in an order that is a pure function of
(seed, step), so a resumed run sees the batches it would have seen. `idx.py` reads the IDX
format; `ssl.py` draws the labelled subsets of Table 2.
"""

from __future__ import annotations

from typing import Iterator

import jax
import ml_collections
import numpy as np

from ebgan_jax.data import arrays

EMBEDDED = arrays.EMBEDDED
# Names `config.dataset` may take: the embedded digits (in memory) and the tfds datasets.
TFDS_DATASETS = ('mnist', 'fashion_mnist', 'celeb_a', 'lsun/bedroom', 'imagenet2012',
                 'imagenet2012_dogs')


def known_datasets() -> tuple[str, ...]:
  """The dataset names `config.dataset` may take (besides `folder:PATH`)."""
  return (EMBEDDED, *TFDS_DATASETS)


def in_memory(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` reads an IDX folder or .npz file (numpy), not tfds / an image folder."""
  folder = config.get('image_folder', '') or str(config.dataset).startswith('folder:')
  return not folder and bool(config.data_dir or config.dataset == EMBEDDED)


def _tfds():
  from ebgan_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top
  return tfds_pipeline


def local_batch_size(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f'Global batch {batch_size} is not divisible by the {process_count} '
                     'processes; choose a multiple.')
  return batch_size // process_count


def num_examples(config: ml_collections.ConfigDict, split: str = 'train') -> int:
  """Examples in `split` (all processes together)."""
  if in_memory(config):
    return arrays.num_examples(config, split)
  return _tfds().num_examples(config, split)


def steps_per_epoch(config: ml_collections.ConfigDict, process_count: int | None = None) -> int:
  """Steps in one pass over the train split (every process takes the same number)."""
  process_count = process_count or jax.process_count()
  local_batch_size(config.batch_size, process_count)
  if in_memory(config):
    return arrays.steps_per_epoch(config)
  return _tfds().steps_per_epoch(config, process_count)


def train_batches(config: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[np.ndarray]:
  """Endless host-local train batches [batch_size // process_count, H, W, C], from `start_step`.

  Args:
    config: the experiment config (dataset, image size, batch size, seed).
    start_step: the global step of the first batch; earlier batches are skipped, so a resumed
      run continues the same data order.
    process_index, process_count: this host's part; default to JAX's.
  Yields:
    float32 numpy arrays in [-1, 1].
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = process_count or jax.process_count()
  local_batch_size(config.batch_size, process_count)
  source = arrays if in_memory(config) else _tfds()
  return source.train_batches(config, start_step=start_step, process_index=process_index,
                              process_count=process_count)


def split_arrays(config: ml_collections.ConfigDict,
                 split: str = 'test') -> tuple[np.ndarray, np.ndarray]:
  """A whole split as (images [N, H, W, C] float32 in [-1, 1], labels [N] int32), in order.

  For evaluation, classifier training and the semi-supervised experiment on small datasets.
  """
  if in_memory(config):
    return arrays.split_arrays(config, split)
  return _tfds().split_arrays(config, split)
