"""Tests of the tfds datasets of ebgan_jax.data.tfds_pipeline on `tfds.testing.mock_data`.

celeb_a, lsun/bedroom (whole and App. F patches), imagenet2012 and its dog-breed subset, and
an image folder: batch shapes and ranges, the centre crop by hand, the 118 dog classes, the
per-(seed, epoch) determinism of the random patches, and per-process sharding of a folder.
"""

import pathlib

import chex
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
from ebgan_jax.data import tfds_pipeline as input_pipeline
from tests import remote_fs

MOCK_EXAMPLES = 12


def _config(tfds_data_dir, **overrides):
  config = common.base_config()
  config.tfds_data_dir = tfds_data_dir
  config.channels = 3
  config.image_size = 64
  config.batch_size = 4
  config.cache = False
  for key, value in overrides.items():
    config[key] = value
  return config


def _first_batches(config, n=1, **kwargs):
  it = input_pipeline.train_batches(config, process_index=0, process_count=1, **kwargs)
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize('overrides,size', [
    (dict(dataset='celeb_a', center_crop=108), 64),
    (dict(dataset='lsun/bedroom'), 64),
    (dict(dataset='lsun/bedroom', resize_size=96, random_crop=True), 64),
    (dict(dataset='imagenet2012', image_size=128), 128),
    (dict(dataset='imagenet2012', image_size=256), 256),
], ids=['celeb_a', 'lsun', 'lsun_patches', 'imagenet128', 'imagenet256'])
def test_batches_are_float32_rgb_in_range(tfds_data_dir, overrides, size):
  config = _config(tfds_data_dir, **overrides)
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    (batch,) = _first_batches(config)
    assert input_pipeline.num_examples(config) == MOCK_EXAMPLES
  chex.assert_shape(batch, (4, size, size, 3))
  assert batch.dtype == np.float32
  assert batch.min() >= -1.0 and batch.max() <= 1.0
  assert batch.std() > 0.05  # not a constant image


def test_center_crop_cuts_the_central_square_before_resizing():
  """A 218x178 image (CelebA's size): 0 inside the central 108x108 square, 255 outside."""
  config = common.base_config()
  config.update(dataset='celeb_a', channels=3, image_size=64, center_crop=108)
  image = np.full((218, 178, 3), 255, np.uint8)
  top, left = (218 - 108) // 2, (178 - 108) // 2
  image[top:top + 108, left:left + 108] = 0
  image[top + 54:top + 108, left:left + 108, 0] = 255  # lower half of the square red
  out = input_pipeline.PREPROCESSORS['celeb_a'](config)({'image': tf.constant(image)}).numpy()
  chex.assert_shape(out, (64, 64, 3))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out[:, :, 1:], -1.0, atol=1e-5)  # nothing from outside the square
  np.testing.assert_allclose(out[:31, :, 0], -1.0, atol=1e-5)  # upper half black
  np.testing.assert_allclose(out[33:, :, 0], 1.0, atol=1e-5)  # lower half red (edge rows blend)


def test_whole_image_resizes_shorter_side_and_center_crops():
  """256x320 (h x w): the central 256x256 square, resized to 64; the 32-pixel side bands
  (white) are cut."""
  config = common.base_config()
  config.update(dataset='lsun/bedroom', channels=3, image_size=64)
  image = np.full((256, 320, 3), 255, np.uint8)
  image[:, 32:288] = 10
  out = input_pipeline.PREPROCESSORS['lsun/bedroom'](config)({'image': tf.constant(image)})
  np.testing.assert_allclose(out.numpy(), 10 / 127.5 - 1.0, atol=1e-5)


def test_dog_wnids_are_imagenet_classes_151_to_268():
  wnids = input_pipeline.IMAGENET_DOG_WNIDS
  assert len(wnids) == len(set(wnids)) == 118
  names = tfds.features.ClassLabel(
      names_file=str(pathlib.Path(tfds.__file__).parent / 'datasets' / 'imagenet2012' /
                     'labels.txt'))
  assert sorted(names.str2int(w) for w in wnids) == list(range(151, 269))
  assert (names.int2str(150), names.int2str(269)) == ('n02077923', 'n02114367')  # not dogs


def test_dog_subset_keeps_exactly_the_118_classes(tfds_data_dir):
  config = _config(tfds_data_dir, dataset='imagenet2012_dogs', image_size=32, batch_size=2)
  n = 400
  with tfds.testing.mock_data(num_examples=n):
    raw = tfds.builder('imagenet2012', data_dir=tfds_data_dir).as_dataset(
        split='train', shuffle_files=False)
    raw_labels = [int(ex['label']) for ex in raw]
    kept = [int(ex['label']) for ex in input_pipeline._examples(config, 'train')]
    input_pipeline._count_subset.cache_clear()
    count = input_pipeline.num_examples(config)
    (batch,) = _first_batches(config)
  expected = [label for label in raw_labels if 151 <= label <= 268]
  assert expected, 'the mock drew no dog labels'
  assert kept == expected  # the same examples, in order
  assert count == len(expected)
  chex.assert_shape(batch, (2, 32, 32, 3))


def _patches_config(tfds_data_dir, **overrides):
  return _config(tfds_data_dir, dataset='lsun/bedroom', resize_size=96, random_crop=True,
                 shuffle_buffer=1, **overrides)  # buffer 1: the stored order, for the test


def test_random_patches_are_crops_of_the_96_image_and_deterministic(tfds_data_dir):
  config = _patches_config(tfds_data_dir)
  whole = _config(tfds_data_dir, dataset='lsun/bedroom', resize_size=96, image_size=96,
                  shuffle_buffer=1)
  steps = MOCK_EXAMPLES // 4  # batches per epoch
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    first = _first_batches(config, 2 * steps)
    again = _first_batches(config, 2 * steps)
    resumed = _first_batches(config, steps, start_step=steps + 1)
    other_seed = _first_batches(_patches_config(tfds_data_dir, seed=1), steps)
    full = np.concatenate(_first_batches(whole, steps))  # [12, 96, 96, 3], stored order
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)  # same (seed, epoch): same crops
  for a, b in zip(first[steps + 1:], resumed):
    np.testing.assert_array_equal(a, b)  # a resumed run crops identically
  epoch0, epoch1 = np.concatenate(first[:steps]), np.concatenate(first[steps:])
  assert not np.array_equal(epoch0, epoch1)  # a new epoch draws new crops
  assert not np.array_equal(epoch0, np.concatenate(other_seed))  # so does a new seed
  offsets = set()
  for i, patch in enumerate(epoch0):  # each patch is a 64x64 window of its 96x96 image
    matches = [(y, x) for y in range(33) for x in range(33)
               if np.array_equal(full[i, y:y + 64, x:x + 64], patch)]
    assert matches, f'patch {i} is not a window of its image'
    offsets.add(matches[0])
  assert len(offsets) > 1  # not always the same window


def _write_images(folder: pathlib.Path, n: int) -> None:
  rng = np.random.RandomState(0)
  for i in range(n):
    h, w = 40 + 7 * i, 90 - 5 * i
    image = rng.randint(0, 256, (h, w, 3), dtype=np.uint8)
    sub = folder / ('a' if i % 2 else 'b')
    sub.mkdir(parents=True, exist_ok=True)
    if i % 3:
      data = tf.io.encode_png(image)
      name = f'img{i}.png'
    else:
      data = tf.io.encode_jpeg(image)
      name = f'img{i}.JPG'
    tf.io.write_file(str(sub / name), data)
  (folder / 'notes.txt').write_text('not an image')


@pytest.mark.parametrize('how', ['image_folder', 'dataset'])
def test_image_folder_batches_and_process_shards(tmp_path, how):
  _write_images(tmp_path, 8)
  overrides = ({'image_folder': str(tmp_path)} if how == 'image_folder'
               else {'dataset': f'folder:{tmp_path}'})
  config = _config('', image_size=32, batch_size=4, **overrides)
  assert input_pipeline.num_examples(config) == 8
  (batch,) = _first_batches(config)
  chex.assert_shape(batch, (4, 32, 32, 3))
  assert batch.dtype == np.float32 and batch.min() >= -1.0 and batch.max() <= 1.0
  halves = [next(input_pipeline.train_batches(config, process_index=p, process_count=2))
            for p in (0, 1)]  # each process: 2 images per step, 2 steps per epoch
  chex.assert_shape(halves, [(2, 32, 32, 3)] * 2)
  assert not any(np.array_equal(a, b) for a in halves[0] for b in halves[1])


def test_an_image_folder_on_a_remote_bucket_is_listed_with_its_scheme(tmp_path):
  # gs://bucket/... is tmp_path/bucket/... (tests/remote_fs.py). The files are listed through
  # epath; a pathlib join would have made them gs:/bucket/... (tf.io then reads the names).
  folder = tmp_path / 'bucket' / 'imgs'
  _write_images(folder, 8)
  config = _config('', image_folder='gs://bucket/imgs')
  with remote_fs.fake_gcs(tmp_path):
    assert input_pipeline.num_examples(config) == 8
    files = input_pipeline._folder_files('gs://bucket/imgs')  # pylint: disable=protected-access
  images = sorted(p.relative_to(tmp_path).as_posix() for p in folder.rglob('img*'))
  assert len(images) == 8 and files == [f'gs://{name}' for name in images]


def test_empty_folder_raises(tmp_path):
  config = _config('', image_folder=str(tmp_path))
  with pytest.raises(ValueError, match='No JPEG or PNG'):
    input_pipeline.num_examples(config)


# -- MNIST through tfds ------------------------------------------------------------------------

@pytest.mark.parametrize('image_size', [32, 28])
def test_mock_data_mnist_batches(tfds_data_dir, image_size):
  config = common.base_config()
  config.update(dataset='mnist', tfds_data_dir=tfds_data_dir, image_size=image_size,
                batch_size=64)
  with tfds.testing.mock_data(num_examples=128):
    assert input_pipeline.steps_per_epoch(config, process_count=1) == 2  # 128 // 64
    batches = _first_batches(config, 3)
  for batch in batches:
    chex.assert_shape(batch, (64, image_size, image_size, 1))
    assert batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0
  if image_size == 32:
    assert np.all(batches[0][:, :2] == -1.0) and np.all(batches[0][:, :, -2:] == -1.0)


def test_unknown_dataset_names_valid_choices(tfds_data_dir):
  config = _config(tfds_data_dir, dataset='imagenet_typo')
  with pytest.raises(ValueError, match='imagenet_typo') as info:
    input_pipeline.get_builder(config)
  for name in ('mnist', 'fashion_mnist', 'celeb_a'):
    assert repr(name) in str(info.value)


# -- per-process shards of an image folder and of a label subset --------------------------------

def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


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
