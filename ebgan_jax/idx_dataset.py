"""A tfds builder for folders of MNIST-format IDX files (offline MNIST, Fashion-MNIST, ...).

A folder holding `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
`t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]` becomes a tfds dataset with
the same features as tfds's `mnist` (`image` uint8 [28, 28, 1], `label` 0..9), so the rest of
the input pipeline cannot tell the two apart. This is how the embedded digits
(`ebgan_jax/data/mnist_10k`) and Debian's `dataset-fashion-mnist` (whose recompressed files
tfds's own `fashion_mnist` builder rejects by checksum) are read.

The prepared copy lives in tfds's data dir under `idx_images/<content digest>`, so a changed
folder is prepared anew and an unchanged one is prepared once.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import pathlib
import struct

import numpy as np
import tensorflow_datasets as tfds

IMAGES_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions.
LABELS_MAGIC = 2049  # IDX: unsigned byte, 1 dimension.
SPLIT_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
EMBEDDED_MNIST_DIR = pathlib.Path(__file__).parent / 'data' / 'mnist_10k'


class IdxFormatError(ValueError):
  """An IDX file is missing, truncated or not of the expected kind."""


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (folder / f'{stem}.gz', folder / stem):
    if candidate.exists():
      return candidate
  raise FileNotFoundError(
      f'No {stem}[.gz] in {folder}. An IDX folder needs the four MNIST files '
      f'{[s + ".gz" for pair in SPLIT_FILES.values() for s in pair]}; for Fashion-MNIST on '
      'Debian run `apt-get install dataset-fashion-mnist` and pass '
      '--config.data_dir=/usr/share/datasets/fashion-mnist.')


def _read_bytes(path: pathlib.Path) -> bytes:
  opener = gzip.open if path.suffix == '.gz' else open
  try:
    with opener(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError) as e:
    raise IdxFormatError(f'Cannot read {path}: {e}. Replace it with an intact copy.') from e


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a uint8 array.

  Args:
    path: the file.
    expected_magic: 2051 for images [N, rows, cols], 2049 for labels [N].
  Returns:
    The array, uint8.
  Raises:
    IdxFormatError: wrong magic number, or a size that does not match the header.
  """
  path = pathlib.Path(path)
  data = _read_bytes(path)
  if len(data) < 8:
    raise IdxFormatError(f'{path} is too short to be an IDX file ({len(data)} bytes).')
  magic = struct.unpack('>I', data[:4])[0]
  if magic != expected_magic:
    kind = 'images (2051)' if expected_magic == IMAGES_MAGIC else 'labels (2049)'
    raise IdxFormatError(
        f'{path} has IDX magic number {magic}, expected {kind}. Is it the right file, '
        'and is it the original big-endian MNIST format?')
  ndim = data[3]
  dims = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
  offset = 4 + 4 * ndim
  count = int(np.prod(dims))
  if len(data) - offset != count:
    raise IdxFormatError(f'{path}: header says {dims} ({count} bytes) but the file holds '
                         f'{len(data) - offset} bytes; it is truncated or corrupt.')
  return np.frombuffer(data, np.uint8, count, offset).reshape(dims)


def read_idx_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, 28, 28, 1] uint8 and labels [N] uint8 of one split of an IDX folder."""
  folder = pathlib.Path(folder)
  if split not in SPLIT_FILES:
    raise ValueError(f'Unknown split {split!r}; IDX folders have {sorted(SPLIT_FILES)}.')
  image_stem, label_stem = SPLIT_FILES[split]
  images = read_idx(_find(folder, image_stem), IMAGES_MAGIC)
  labels = read_idx(_find(folder, label_stem), LABELS_MAGIC)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise IdxFormatError(f'{folder} {split}: images {images.shape} and labels {labels.shape} '
                         'do not pair up.')
  return images[..., None], labels


def folder_digest(folder: str | os.PathLike) -> str:
  """A short content digest of an IDX folder's four files (names the prepared copy)."""
  folder = pathlib.Path(folder)
  h = hashlib.sha256()
  for pair in SPLIT_FILES.values():
    for stem in pair:
      path = _find(folder, stem)
      h.update(path.name.encode())
      h.update(path.read_bytes())
  return h.hexdigest()[:16]


class IdxImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """tfds builder over one IDX folder; its BuilderConfig is named by the folder's digest."""

  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, folder: str | os.PathLike, **kwargs):
    self._folder = pathlib.Path(folder).resolve()
    if not self._folder.is_dir():
      raise FileNotFoundError(
          f'IDX folder {self._folder} does not exist. Set --config.data_dir to a folder of '
          'MNIST-format IDX files, or leave it empty to use --config.dataset.')
    config = tfds.core.BuilderConfig(name=f'd{folder_digest(self._folder)}')
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'MNIST-format IDX files from {self._folder}.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(28, 28, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the files are local.
    return {split: self._generate_examples(split) for split in SPLIT_FILES}

  def _generate_examples(self, split):
    images, labels = read_idx_split(self._folder, split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


def idx_builder(folder: str | os.PathLike, data_dir: str | None = None) -> IdxImages:
  """The prepared tfds builder of an IDX folder (prepared on first use, under a file lock)."""
  builder = IdxImages(folder=folder, data_dir=data_dir or None)
  if not builder.is_prepared():
    lock_path = pathlib.Path(builder.data_dir).parent / '.prepare.lock'
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # Processes sharing a disk prepare it once.
      builder = IdxImages(folder=folder, data_dir=data_dir or None)
      if not builder.is_prepared():
        builder.download_and_prepare()
  return builder
