"""Tests of ebgan_jax.input_pipeline and ebgan_jax.idx_dataset on the embedded digits.

The expected images are read from the embedded IDX files here with gzip + numpy (header
skipped by hand), independently of `idx_dataset.read_idx`, and scaled by hand: a pixel p in
0..255 becomes p / 127.5 - 1, so 0 -> -1 and 255 -> +1.
"""

import collections
import gzip
import pathlib
import struct

import chex
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
from ebgan_jax import idx_dataset, input_pipeline

MNIST_DIR = pathlib.Path(input_pipeline.__file__).parent / 'data' / 'mnist_10k'
# Large batches: an epoch is 16 of them, so a test can read epochs (and the first batches of
# the next) without paying Python and tf.data per-batch costs for hundreds of batches.
BATCH = 500
STEPS_PER_EPOCH = 16  # 8,000 train digits // 500


def _config(tfds_data_dir, **overrides):
  config = common.base_config()
  config.dataset = 'mnist_10k'
  config.tfds_data_dir = tfds_data_dir
  config.batch_size = BATCH
  config.image_size = 32
  config.seed = 0
  for key, value in overrides.items():
    config[key] = value
  return config


def _raw_idx(name: str, header_bytes: int) -> np.ndarray:
  """Reads an embedded IDX file by skipping its header by hand (16 bytes images, 8 labels)."""
  with gzip.open(MNIST_DIR / f'{name}.gz', 'rb') as f:
    return np.frombuffer(f.read()[header_bytes:], np.uint8)


@pytest.fixture(scope='module')
def raw_train():
  """(images [8000, 28, 28] float in [-1, 1], labels [8000]) straight from the IDX bytes."""
  images = _raw_idx('train-images-idx3-ubyte', 16).reshape(-1, 28, 28)
  labels = _raw_idx('train-labels-idx1-ubyte', 8)
  return images.astype(np.float32) / 127.5 - 1.0, labels


def _keys(images: np.ndarray) -> list[bytes]:
  """Hashable identity of each image (the embedded digits are pairwise distinct)."""
  return [np.ascontiguousarray(im, np.float32).tobytes() for im in images]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope='module')
def first_batches(tfds_data_dir):
  """The first 22 batches (an epoch is 16) of a fresh iterator, seed 0."""
  return _take(input_pipeline.train_batches(_config(tfds_data_dir), process_index=0,
                                            process_count=1), STEPS_PER_EPOCH + 6)


# -- batches ---------------------------------------------------------------------------------

def test_batch_shape_dtype_and_range(first_batches):
  batch = first_batches[0]
  chex.assert_shape(batch, (BATCH, 32, 32, 1))
  assert batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  assert batch.max() > 0.9  # the digits' ink reaches the top of the range


def test_zero_padded_border_is_exactly_minus_one_and_center_is_the_digit(first_batches,
                                                                         raw_train):
  batch = first_batches[0]
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False  # (32 - 28) / 2 = 2 pixels on each side
  assert np.all(batch[:, border, 0] == -1.0)
  digits = set(_keys(raw_train[0]))
  assert all(k in digits for k in _keys(batch[:, 2:30, 2:30, 0]))


def test_image_size_28_has_no_padding(tfds_data_dir, raw_train):
  batch = next(input_pipeline.train_batches(_config(tfds_data_dir, image_size=28),
                                            process_index=0, process_count=1))
  chex.assert_shape(batch, (BATCH, 28, 28, 1))
  digits = set(_keys(raw_train[0]))
  assert all(k in digits for k in _keys(batch[..., 0]))  # unpadded raw digits, scaled


def test_split_arrays_sizes_and_labels_paired_with_images(tfds_data_dir, raw_train):
  config = _config(tfds_data_dir)
  train_images, train_labels = input_pipeline.split_arrays(config, 'train')
  test_images, test_labels = input_pipeline.split_arrays(config, 'test')
  chex.assert_shape(train_images, (8000, 32, 32, 1))
  chex.assert_shape(test_images, (2000, 32, 32, 1))
  chex.assert_shape(train_labels, (8000,))
  chex.assert_shape(test_labels, (2000,))
  assert train_labels.dtype == np.int32
  assert set(np.unique(train_labels)) == set(range(10))
  assert set(np.unique(test_labels)) == set(range(10))
  # tfds stores the examples in its own (key-hash) order, not file order; what matters is
  # that every digit comes once and keeps its own label.
  label_of = dict(zip(_keys(raw_train[0]), raw_train[1]))
  got_keys = _keys(train_images[:, 2:30, 2:30, 0])
  assert len(set(got_keys)) == len(got_keys) == len(label_of)
  assert set(got_keys) == set(label_of)
  np.testing.assert_array_equal(train_labels, [label_of[k] for k in got_keys])
  assert np.all(train_images[:, :2] == -1.0)
  np.testing.assert_array_equal(np.bincount(test_labels, minlength=10),
                                np.bincount(_raw_idx('t10k-labels-idx1-ubyte', 8), minlength=10))


def test_epoch_visits_every_train_image_once_and_reshuffles(first_batches, raw_train):
  epoch0 = np.concatenate(first_batches[:STEPS_PER_EPOCH])[:, 2:30, 2:30, 0]
  assert collections.Counter(_keys(epoch0)) == collections.Counter(_keys(raw_train[0]))
  # Epoch 1 starts with another order than epoch 0.
  assert not np.array_equal(first_batches[STEPS_PER_EPOCH], first_batches[0])


# -- determinism and resumption ----------------------------------------------------------------

def test_same_seed_gives_identical_batches_different_seed_differs(tfds_data_dir, first_batches):
  again = next(input_pipeline.train_batches(_config(tfds_data_dir), process_index=0,
                                            process_count=1))
  np.testing.assert_array_equal(again, first_batches[0])
  other = next(input_pipeline.train_batches(_config(tfds_data_dir, seed=1), process_index=0,
                                            process_count=1))
  assert not np.array_equal(other, first_batches[0])


@pytest.mark.parametrize('k', [1, 3, STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 5])
def test_resumed_iterator_continues_the_same_order(tfds_data_dir, first_batches, k):
  resumed = input_pipeline.train_batches(_config(tfds_data_dir), start_step=k, process_index=0,
                                         process_count=1)
  np.testing.assert_array_equal(next(resumed), first_batches[k])  # the (k+1)-th batch
  if k + 1 < len(first_batches):
    np.testing.assert_array_equal(next(resumed), first_batches[k + 1])


def test_steps_per_epoch(tfds_data_dir):
  config = _config(tfds_data_dir, batch_size=64)
  assert input_pipeline.steps_per_epoch(config, process_count=1) == 125  # 8000 // 64
  assert input_pipeline.steps_per_epoch(config, process_count=2) == 125  # (8000 // 2) // 32
  config.batch_size = 48
  assert input_pipeline.steps_per_epoch(config, process_count=1) == 166  # 8000 // 48 = 166.67


# -- per-process sharding ----------------------------------------------------------------------

def test_two_processes_read_disjoint_halves(tfds_data_dir, raw_train):
  config = _config(tfds_data_dir)
  per_process = []
  for index in (0, 1):
    batches = _take(input_pipeline.train_batches(config, process_index=index, process_count=2),
                    STEPS_PER_EPOCH)
    for b in batches:
      chex.assert_shape(b, (BATCH // 2, 32, 32, 1))  # batch_size / process_count
    per_process.append(_keys(np.concatenate(batches)[:, 2:30, 2:30, 0]))
  a, b = set(per_process[0]), set(per_process[1])
  assert len(per_process[0]) == len(a) == 4000 and len(b) == 4000
  assert not a & b
  assert a | b == set(_keys(raw_train[0]))


def _as_uint8_keys(batches):
  """Hashable identity of each image of float batches in [-1, 1] (rounded back to uint8)."""
  images = np.concatenate(batches)
  return [np.round((im + 1.0) * 127.5).astype(np.uint8).tobytes() for im in images]


def _epoch_keys(config, process_index, process_count):
  steps = input_pipeline.steps_per_epoch(config, process_count)
  return _as_uint8_keys(_take(input_pipeline.train_batches(
      config, process_index=process_index, process_count=process_count), steps))


def test_two_processes_read_disjoint_halves_of_an_image_folder(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  files = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
  for i, image in enumerate(files):  # 16x16 files at image_size 16: no resize, no crop.
    (folder / f'img{i:02d}.png').write_bytes(tf.io.encode_png(image).numpy())
  config = _config(str(tmp_path / 'tfds'), image_folder=str(folder), channels=3,
                   image_size=16, batch_size=4)
  # 12 files, 2 a process and step: 3 steps an epoch, each process reading 6 files.
  shards = [_epoch_keys(config, i, 2) for i in (0, 1)]
  assert [len(k) for k in shards] == [6, 6]
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == {im.tobytes() for im in files}


def test_two_processes_read_disjoint_halves_of_a_label_subset(tfds_data_dir):
  """imagenet2012_dogs: the dog classes of imagenet2012, filtered, then sharded."""
  config = _config(tfds_data_dir, dataset='imagenet2012_dogs', channels=3, image_size=16,
                   batch_size=2)
  input_pipeline._count_subset.cache_clear()  # pylint: disable=protected-access
  try:
    with tfds.testing.mock_data(num_examples=100):
      # The mocked split's dogs, counted here from its labels: ILSVRC classes 151-268.
      labels = [int(ex['label']) for ex in tfds.as_numpy(
          tfds.load('imagenet2012', split='train', data_dir=tfds_data_dir))]
      dogs = sum(151 <= label <= 268 for label in labels)
      assert dogs == 6 and len(labels) == 100, (dogs, len(labels))  # mock data's draw
      both = _epoch_keys(config, 0, 1)  # One process: 3 steps of 2 = every dog.
      shards = [_epoch_keys(config, i, 2) for i in (0, 1)]  # 3 steps of 1 each.
  finally:
    input_pipeline._count_subset.cache_clear()  # pylint: disable=protected-access
  assert len(set(both)) == len(both) == dogs
  assert [len(k) for k in shards] == [3, 3]
  assert not set(shards[0]) & set(shards[1])
  assert set(shards[0]) | set(shards[1]) == set(both)


def test_batch_not_divisible_by_process_count_raises(tfds_data_dir):
  config = _config(tfds_data_dir, batch_size=63)
  with pytest.raises(ValueError, match='divisible'):
    next(input_pipeline.train_batches(config, process_index=0, process_count=2))


# -- tfds.testing.mock_data --------------------------------------------------------------------

@pytest.mark.parametrize('image_size', [32, 28])
def test_mock_data_mnist_batches(tfds_data_dir, image_size):
  config = _config(tfds_data_dir, dataset='mnist', image_size=image_size, batch_size=64)
  with tfds.testing.mock_data(num_examples=128):
    assert input_pipeline.steps_per_epoch(config, process_count=1) == 2  # 128 // 64
    batches = _take(input_pipeline.train_batches(config, process_index=0, process_count=1), 3)
  for batch in batches:
    chex.assert_shape(batch, (64, image_size, image_size, 1))
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
  if image_size == 32:
    assert np.all(batches[0][:, :2] == -1.0) and np.all(batches[0][:, :, -2:] == -1.0)


# -- errors ------------------------------------------------------------------------------------

def test_unknown_dataset_names_valid_choices(tfds_data_dir):
  config = _config(tfds_data_dir, dataset='imagenet_typo')
  with pytest.raises(ValueError, match='imagenet_typo') as info:
    input_pipeline.get_builder(config)
  for name in ('mnist', 'mnist_10k', 'fashion_mnist'):
    assert repr(name) in str(info.value)


def test_image_size_64_for_mnist_raises(tfds_data_dir):
  config = _config(tfds_data_dir, image_size=64)
  with pytest.raises(ValueError, match='image_size'):
    next(input_pipeline.train_batches(config, process_index=0, process_count=1))


def test_missing_data_dir_raises_file_not_found(tmp_path):
  missing = tmp_path / 'no_such_idx_folder'
  config = _config(str(tmp_path / 'tfds'), data_dir=str(missing))
  with pytest.raises(FileNotFoundError, match='data_dir') as info:
    input_pipeline.get_builder(config)
  assert str(missing) in str(info.value)


def _idx_bytes(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
  return struct.pack(f'>I{len(dims)}I', magic, *dims) + body


def _write_idx_folder(folder: pathlib.Path, image_magic: int = 2051,
                      truncate_train_images: int = 0) -> pathlib.Path:
  """Four gzipped IDX files with 4 train and 2 test 28x28 digits."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 4), ('t10k', 2)):
    images = _idx_bytes(image_magic, (n, 28, 28), rng.integers(0, 256, n * 784, np.uint8).tobytes())
    if prefix == 'train' and truncate_train_images:
      images = images[:-truncate_train_images]
    labels = _idx_bytes(2049, (n,), bytes(range(n)))
    with gzip.open(folder / f'{prefix}-images-idx3-ubyte.gz', 'wb') as f:
      f.write(images)
    with gzip.open(folder / f'{prefix}-labels-idx1-ubyte.gz', 'wb') as f:
      f.write(labels)
  return folder


def test_idx_folder_is_read_through_data_dir(tmp_path):
  folder = _write_idx_folder(tmp_path / 'idx')
  config = _config(str(tmp_path / 'tfds'), data_dir=str(folder), batch_size=2)
  images, labels = input_pipeline.split_arrays(config, 'train')
  chex.assert_shape(images, (4, 32, 32, 1))
  np.testing.assert_array_equal(np.sort(labels), [0, 1, 2, 3])  # as written, in tfds's order


def test_wrong_magic_number_raises_idx_format_error(tmp_path):
  folder = _write_idx_folder(tmp_path / 'idx', image_magic=2049)  # labels' magic on images
  config = _config(str(tmp_path / 'tfds'), data_dir=str(folder))
  with pytest.raises(idx_dataset.IdxFormatError, match='magic'):
    input_pipeline.get_builder(config)


def test_truncated_idx_file_raises(tmp_path):
  folder = _write_idx_folder(tmp_path / 'idx', truncate_train_images=100)
  config = _config(str(tmp_path / 'tfds'), data_dir=str(folder))
  with pytest.raises(idx_dataset.IdxFormatError, match='truncated'):
    input_pipeline.get_builder(config)


# -- idx_dataset.read_idx ----------------------------------------------------------------------

@pytest.mark.parametrize('gzipped', [False, True])
def test_read_idx_hand_built_images(tmp_path, gzipped):
  data = _idx_bytes(2051, (2, 2, 3), bytes(range(12)))
  path = tmp_path / ('x.gz' if gzipped else 'x')
  if gzipped:
    with gzip.open(path, 'wb') as f:
      f.write(data)
  else:
    path.write_bytes(data)
  got = idx_dataset.read_idx(path, 2051)
  expected = np.array([[[0, 1, 2], [3, 4, 5]],
                       [[6, 7, 8], [9, 10, 11]]], np.uint8)  # row-major, as written
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.uint8


def test_read_idx_hand_built_labels(tmp_path):
  path = tmp_path / 'labels'
  path.write_bytes(_idx_bytes(2049, (4,), bytes([3, 1, 4, 1])))
  np.testing.assert_array_equal(idx_dataset.read_idx(path, 2049), [3, 1, 4, 1])


def test_read_idx_wrong_magic_mentions_magic(tmp_path):
  path = tmp_path / 'x'
  path.write_bytes(_idx_bytes(2051, (2, 2, 3), bytes(range(12))))
  with pytest.raises(idx_dataset.IdxFormatError, match='magic'):
    idx_dataset.read_idx(path, 2049)


@pytest.mark.parametrize('data', [
    _idx_bytes(2051, (2, 2, 3), bytes(range(11))),   # one pixel short
    _idx_bytes(2051, (2, 2, 3), bytes(range(13))),   # one byte too many
    b'\x00\x00\x08',                                # shorter than a header
])
def test_read_idx_truncated_or_oversized_raises(tmp_path, data):
  path = tmp_path / 'x'
  path.write_bytes(data)
  with pytest.raises(idx_dataset.IdxFormatError):
    idx_dataset.read_idx(path, 2051)


def test_read_idx_truncated_gzip_raises(tmp_path):
  payload = _idx_bytes(2051, (10, 28, 28), bytes(10 * 784))
  path = tmp_path / 'x.gz'
  path.write_bytes(gzip.compress(payload)[:-20])  # cut the gzip stream
  with pytest.raises(idx_dataset.IdxFormatError):
    idx_dataset.read_idx(path, 2051)
