"""Tests of the in-memory input path (`ebgan_jax.data`, numpy) on the embedded digits.

The expected images are read from the embedded IDX files here with gzip + numpy (header
skipped by hand), independently of `data.idx.read_idx`, and scaled by hand: a pixel p in
0..255 becomes p / 127.5 - 1, so 0 -> -1 and 255 -> +1. The order is the one the module
docstring of `ebgan_jax/data/arrays.py` specifies, recomputed here with numpy.
"""

import collections
import gzip
import pathlib
import shutil
import struct
import sys

import chex
import numpy as np
import pytest

from configs import common
from ebgan_jax import data
from ebgan_jax.data import idx
from tests import remote_fs

MNIST_DIR = pathlib.Path(data.__file__).parent / 'mnist_10k'
STEPS_PER_EPOCH = 125  # 8,000 train digits // 64


def _config(**overrides):
  config = common.base_config()
  config.dataset = 'mnist_10k'
  config.batch_size = 64
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


def _batches(config, n, **kwargs):
  it = data.train_batches(config, process_index=kwargs.pop('process_index', 0),
                          process_count=kwargs.pop('process_count', 1), **kwargs)
  return [next(it) for _ in range(n)]


def _keys(images: np.ndarray) -> list[bytes]:
  """Hashable identity of each image (the embedded digits are pairwise distinct)."""
  return [np.ascontiguousarray(im, np.float32).tobytes() for im in images]


def test_the_embedded_digits_and_idx_folders_are_in_memory_the_rest_tfds():
  assert data.in_memory(_config())
  assert data.in_memory(_config(dataset='mnist', data_dir='/some/idx'))
  assert not data.in_memory(_config(dataset='mnist'))
  assert not data.in_memory(_config(dataset='folder:/photos'))


def test_a_batch_is_the_padded_scaled_digits_of_the_epoch_permutation(raw_train):
  (batch,) = _batches(_config(), 1)
  chex.assert_shape(batch, (64, 32, 32, 1))
  assert batch.dtype == np.float32
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False  # (32 - 28) / 2 = 2 pixels on each side
  assert np.all(batch[:, border, 0] == -1.0)
  order = np.random.default_rng([0, 0]).permutation(8000)  # seed 0, epoch 0
  np.testing.assert_array_equal(batch[:, 2:30, 2:30, 0], raw_train[0][order[:64]])


def test_image_size_28_has_no_padding(raw_train):
  (batch,) = _batches(_config(image_size=28), 1)
  order = np.random.default_rng([0, 0]).permutation(8000)
  np.testing.assert_array_equal(batch[..., 0], raw_train[0][order[:64]])


def test_split_arrays_are_the_files_in_order(raw_train):
  config = _config()
  train_images, train_labels = data.split_arrays(config, 'train')
  test_images, test_labels = data.split_arrays(config, 'test')
  chex.assert_shape(train_images, (8000, 32, 32, 1))
  chex.assert_shape(test_images, (2000, 32, 32, 1))
  assert train_labels.dtype == np.int32
  np.testing.assert_array_equal(train_images[:, 2:30, 2:30, 0], raw_train[0])
  np.testing.assert_array_equal(train_labels, raw_train[1])
  np.testing.assert_array_equal(test_labels, _raw_idx('t10k-labels-idx1-ubyte', 8))
  assert data.num_examples(config, 'test') == 2000


@pytest.fixture(scope='module')
def epoch_and_more():
  """The first 131 batches (an epoch is 125) of a fresh iterator, seed 0, at batch 64."""
  return _batches(_config(), STEPS_PER_EPOCH + 6)


def test_an_epoch_visits_every_train_image_once_and_the_next_reshuffles(epoch_and_more,
                                                                        raw_train):
  epoch0 = np.concatenate(epoch_and_more[:STEPS_PER_EPOCH])[:, 2:30, 2:30, 0]
  assert collections.Counter(_keys(epoch0)) == collections.Counter(_keys(raw_train[0]))
  order1 = np.random.default_rng([0, 1]).permutation(8000)
  np.testing.assert_array_equal(epoch_and_more[STEPS_PER_EPOCH][:, 2:30, 2:30, 0],
                                raw_train[0][order1[:64]])


@pytest.mark.parametrize('k', [1, STEPS_PER_EPOCH - 1, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 4])
def test_a_resumed_iterator_continues_the_same_order(epoch_and_more, k):
  resumed = data.train_batches(_config(), start_step=k, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(resumed), epoch_and_more[k])
  np.testing.assert_array_equal(next(resumed), epoch_and_more[k + 1])


def test_the_seed_sets_the_order(epoch_and_more):
  np.testing.assert_array_equal(_batches(_config(), 1)[0], epoch_and_more[0])
  assert not np.array_equal(_batches(_config(seed=1), 1)[0], epoch_and_more[0])


def test_processes_split_each_global_batch_so_any_process_count_sees_the_same_batches(
    epoch_and_more):
  for step in (0, STEPS_PER_EPOCH + 2):
    halves = [next(data.train_batches(_config(), start_step=step, process_index=i,
                                      process_count=2)) for i in (0, 1)]
    quarters = [next(data.train_batches(_config(), start_step=step, process_index=i,
                                        process_count=4)) for i in range(4)]
    chex.assert_shape(halves[0], (32, 32, 32, 1))
    np.testing.assert_array_equal(np.concatenate(halves), epoch_and_more[step])
    np.testing.assert_array_equal(np.concatenate(quarters), epoch_and_more[step])


def test_steps_per_epoch_drops_the_remainder():
  assert data.steps_per_epoch(_config(), process_count=1) == 125  # 8000 // 64
  assert data.steps_per_epoch(_config(), process_count=2) == 125
  assert data.steps_per_epoch(_config(batch_size=48), process_count=1) == 166  # 166.67


def test_a_batch_that_does_not_split_over_the_processes_raises():
  with pytest.raises(ValueError, match='divisible'):
    next(data.train_batches(_config(batch_size=63), process_index=0, process_count=2))


def test_image_size_64_for_mnist_names_the_allowed_sizes():
  with pytest.raises(ValueError, match='image_size must be 28'):
    next(data.train_batches(_config(image_size=64), process_index=0, process_count=1))


# -- .npz files --------------------------------------------------------------------------------

def test_an_npz_file_serves_its_arrays(tmp_path):
  rng = np.random.default_rng(0)
  train = rng.integers(0, 256, (10, 8, 8, 3), np.uint8)
  path = tmp_path / 'tiny.npz'
  np.savez(path, train_images=train, test_images=train[:4], test_labels=np.arange(4))
  config = _config(data_dir=str(path), image_size=8, channels=3, batch_size=5)
  (batch,) = _batches(config, 1)
  order = np.random.default_rng([0, 0]).permutation(10)
  np.testing.assert_allclose(batch, train[order[:5]] / 127.5 - 1.0, rtol=0, atol=1e-6)
  _, train_labels = data.split_arrays(config, 'train')
  np.testing.assert_array_equal(train_labels, -np.ones(10))  # No labels stored: -1.
  _, test_labels = data.split_arrays(config, 'test')
  np.testing.assert_array_equal(test_labels, np.arange(4))
  with pytest.raises(ValueError, match='resize the arrays beforehand'):
    next(data.train_batches(_config(data_dir=str(path), image_size=16, channels=3),
                            process_index=0, process_count=1))
  with pytest.raises(ValueError, match='--config.channels=3'):
    data.split_arrays(_config(data_dir=str(path), image_size=8, channels=1), 'test')
  np.savez(tmp_path / 'no_test.npz', train_images=train)
  with pytest.raises(KeyError, match='no test_images'):
    data.split_arrays(_config(data_dir=str(tmp_path / 'no_test.npz')), 'test')


# -- IDX folders ---------------------------------------------------------------------------------

def _idx_bytes(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
  return struct.pack(f'>I{len(dims)}I', magic, *dims) + body


def _write_idx_folder(folder: pathlib.Path, image_magic: int = 2051,
                      truncate_train_images: int = 0) -> pathlib.Path:
  """Four gzipped IDX files with 4 train and 2 test 28x28 digits."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 4), ('t10k', 2)):
    images = _idx_bytes(image_magic, (n, 28, 28),
                        rng.integers(0, 256, n * 784, np.uint8).tobytes())
    if prefix == 'train' and truncate_train_images:
      images = images[:-truncate_train_images]
    labels = _idx_bytes(2049, (n,), bytes(range(n)))
    with gzip.open(folder / f'{prefix}-images-idx3-ubyte.gz', 'wb') as f:
      f.write(images)
    with gzip.open(folder / f'{prefix}-labels-idx1-ubyte.gz', 'wb') as f:
      f.write(labels)
  return folder


def test_an_idx_folder_is_read_through_data_dir_in_file_order(tmp_path):
  folder = _write_idx_folder(tmp_path / 'idx')
  images, labels = data.split_arrays(_config(data_dir=str(folder), batch_size=2), 'train')
  chex.assert_shape(images, (4, 32, 32, 1))
  np.testing.assert_array_equal(labels, [0, 1, 2, 3])


def test_an_idx_folder_on_a_remote_bucket(tmp_path):
  store = tmp_path / 'store'
  shutil.copytree(MNIST_DIR, store / 'bucket' / 'digits')
  with remote_fs.fake_gcs(store):
    images, labels = data.split_arrays(_config(data_dir='gs://bucket/digits'), 'test')
  chex.assert_shape(images, (2000, 32, 32, 1))
  np.testing.assert_array_equal(labels, _raw_idx('t10k-labels-idx1-ubyte', 8))


def test_a_missing_data_dir_is_named(tmp_path):
  missing = tmp_path / 'no_such_idx_folder'
  with pytest.raises(FileNotFoundError, match='data_dir') as info:
    data.split_arrays(_config(data_dir=str(missing)), 'train')
  assert str(missing) in str(info.value)


def test_wrong_magic_and_truncated_files_raise_idx_format_errors(tmp_path):
  wrong = _write_idx_folder(tmp_path / 'wrong', image_magic=2049)  # labels' magic on images
  with pytest.raises(idx.IdxFormatError, match='magic'):
    data.split_arrays(_config(data_dir=str(wrong)), 'train')
  short = _write_idx_folder(tmp_path / 'short', truncate_train_images=100)
  with pytest.raises(idx.IdxFormatError, match='truncated'):
    data.split_arrays(_config(data_dir=str(short)), 'train')


@pytest.mark.parametrize('gzipped', [False, True])
def test_read_idx_hand_built_images(tmp_path, gzipped):
  payload = _idx_bytes(2051, (2, 2, 3), bytes(range(12)))
  path = tmp_path / ('x.gz' if gzipped else 'x')
  path.write_bytes(gzip.compress(payload) if gzipped else payload)
  got = idx.read_idx(path, 2051)
  expected = np.array([[[0, 1, 2], [3, 4, 5]],
                       [[6, 7, 8], [9, 10, 11]]], np.uint8)  # row-major, as written
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.uint8


def test_read_idx_hand_built_labels(tmp_path):
  path = tmp_path / 'labels'
  path.write_bytes(_idx_bytes(2049, (4,), bytes([3, 1, 4, 1])))
  np.testing.assert_array_equal(idx.read_idx(path, 2049), [3, 1, 4, 1])


@pytest.mark.parametrize('payload', [
    _idx_bytes(2051, (2, 2, 3), bytes(range(11))),   # one pixel short
    _idx_bytes(2051, (2, 2, 3), bytes(range(13))),   # one byte too many
    b'\x00\x00\x08',                                # shorter than a header
])
def test_read_idx_truncated_or_oversized_raises(tmp_path, payload):
  path = tmp_path / 'x'
  path.write_bytes(payload)
  with pytest.raises(idx.IdxFormatError):
    idx.read_idx(path, 2051)


def test_read_idx_truncated_gzip_raises(tmp_path):
  payload = _idx_bytes(2051, (10, 28, 28), bytes(10 * 784))
  path = tmp_path / 'x.gz'
  path.write_bytes(gzip.compress(payload)[:-20])  # cut the gzip stream
  with pytest.raises(idx.IdxFormatError):
    idx.read_idx(path, 2051)


def test_the_tfds_names_are_what_the_tfds_pipeline_reads():
  from ebgan_jax.data import tfds_pipeline  # pylint: disable=g-import-not-at-top
  assert set(data.TFDS_DATASETS) == set(tfds_pipeline.PREPROCESSORS) - {'folder'}


def test_the_in_memory_path_imports_no_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  script = ('import sys; from ebgan_jax import data; from configs import common\n'
            'c = common.base_config(); next(data.train_batches(c, process_index=0, '
            'process_count=1)); data.split_arrays(c)\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("tensorflow", "tensorflow_datasets")))')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == '[]', out.stdout
