"""MNIST-format IDX files (the embedded digits, Fashion-MNIST, ...), read with numpy.

A folder holding `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
`t10k-images-idx3-ubyte[.gz]` and `t10k-labels-idx1-ubyte[.gz]` is a dataset with the same
content as tfds's `mnist`: `image` uint8 [28, 28, 1], `label` 0..9. This is how the embedded
digits (`ebgan_jax/data/mnist_10k`) and Debian's `dataset-fashion-mnist` (whose recompressed
files tfds's own `fashion_mnist` builder rejects by checksum) are read. The folder may be
remote (gs://...): files are opened through `etils.epath`.
"""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
from etils import epath

from ebgan_jax import paths

IMAGES_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions.
LABELS_MAGIC = 2049  # IDX: unsigned byte, 1 dimension.
SPLIT_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
EMBEDDED_MNIST_DIR = pathlib.Path(__file__).parent / 'mnist_10k'


class IdxFormatError(ValueError):
  """An IDX file is missing, truncated or not of the expected kind."""


def _find(folder: epath.Path, stem: str) -> epath.Path:
  if not folder.is_dir():
    raise FileNotFoundError(
        f'IDX folder {folder} does not exist. Set --config.data_dir to a folder of '
        'MNIST-format IDX files (or an .npz file), or leave it empty to use --config.dataset.')
  for candidate in (folder / f'{stem}.gz', folder / stem):
    if candidate.exists():
      return candidate
  raise FileNotFoundError(
      f'No {stem}[.gz] in {folder}. An IDX folder needs the four MNIST files '
      f'{[s + ".gz" for pair in SPLIT_FILES.values() for s in pair]}; for Fashion-MNIST on '
      'Debian run `apt-get install dataset-fashion-mnist` and pass '
      '--config.data_dir=/usr/share/datasets/fashion-mnist.')


def _read_bytes(path: epath.Path) -> bytes:
  try:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == '.gz' else data
  except (OSError, EOFError) as e:
    raise IdxFormatError(f'Cannot read {path}: {e}. Replace it with an intact copy.') from e


def read_idx(path: paths.PathLike, expected_magic: int) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a uint8 array.

  Args:
    path: the file.
    expected_magic: 2051 for images [N, rows, cols], 2049 for labels [N].
  Returns:
    The array, uint8.
  Raises:
    IdxFormatError: wrong magic number, or a size that does not match the header.
  """
  path = paths.as_path(path)
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


def read_idx_split(folder: paths.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, 28, 28, 1] uint8 and labels [N] uint8 of one split of an IDX folder."""
  folder = paths.as_path(folder)
  if split not in SPLIT_FILES:
    raise ValueError(f'Unknown split {split!r}; IDX folders have {sorted(SPLIT_FILES)}.')
  image_stem, label_stem = SPLIT_FILES[split]
  images = read_idx(_find(folder, image_stem), IMAGES_MAGIC)
  labels = read_idx(_find(folder, label_stem), LABELS_MAGIC)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise IdxFormatError(f'{folder} {split}: images {images.shape} and labels {labels.shape} '
                         'do not pair up.')
  return images[..., None], labels
