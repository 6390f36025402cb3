"""tfds datasets and image folders: tfds split -> tf.data -> host-local numpy batches.

The tf.data path of `ebgan_jax.data` (imported only when a config needs it: the in-memory
datasets never import TensorFlow). Batches are NHWC float32 in [-1, 1].

Each process reads its own shard (`ds.shard(process_count, process_index)`) and yields
`batch_size // process_count` images per step; `sharding.global_batch` stitches the hosts'
pieces into one global array. The order of the data is a pure function of
(config.seed, epoch, process index): every epoch is shuffled with a seed derived from those,
so a run resumed at step s sees exactly the batches it would have seen without stopping.

Natural-image datasets (Sec. 4.3, 4.4, App. F): `celeb_a`, `lsun/bedroom`, `imagenet2012`,
`imagenet2012_dogs` (the dog-breed subset) and a folder of JPEG/PNG files
(`config.image_folder`, or `config.dataset = 'folder:PATH'`) share one preprocessing,
`_natural_image`, driven by three config fields (read with `config.get`):
- `center_crop` (0): the side of the central square cut from the raw image first; 0 takes the
  largest one (side = the shorter side), i.e. "resize the shorter side, then centre-crop".
- `resize_size` (0 = `image_size`): that square is resized (bilinear, antialiased) to this side.
- `random_crop` (False): when True, every epoch takes a random `image_size` crop of the
  `resize_size` square (App. F's "augmented patches": 64x64 crops of 96x96 LSUN images); the
  crop of example i of an epoch is a stateless function of (seed, epoch, process, i), so a
  resumed run crops identically. When False, the centre `image_size` crop is taken.
Everything per example is a TensorFlow op inside `tf.data` (no Python per example). Turn
`cache` off for datasets that do not fit in host memory (LSUN, ImageNet): the configs do.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Iterator

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ebgan_jax import paths
from ebgan_jax.data import local_batch_size  # The package's, shared with the in-memory path.

# tf.data only: keep TensorFlow off the accelerators JAX uses.
tf.config.set_visible_devices([], 'GPU')


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


def _natural_image(config: ml_collections.ConfigDict) -> Callable[[dict], tf.Tensor]:
  """uint8 [h, w, 3] of any size -> float32 [R, R, 3] in [-1, 1] (see the module docstring).

  Central square of side `center_crop` (0: min(h, w)), resized to R = `resize_size`
  (0: `image_size`); when not `random_crop`, the central `image_size` square of that. With
  `random_crop`, R stays and `_random_crop` cuts `image_size` patches per epoch.
  """
  size = config.image_size
  resize = config.get('resize_size', 0) or size
  crop = config.get('center_crop', 0)
  random_crop = config.get('random_crop', False)
  if config.channels != 3:
    raise ValueError(f'{config.dataset} images are RGB; set --config.channels=3 '
                     f'(got {config.channels}).')
  if resize < size:
    raise ValueError(f'config.resize_size={resize} is smaller than config.image_size={size}.')

  def preprocess(example: dict) -> tf.Tensor:
    image = example['image']  # [h, w, 3] uint8
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.minimum(h, w) if not crop else tf.minimum(tf.minimum(h, w), crop)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top:top + side, left:left + side]  # [side, side, 3]
    image = tf.image.resize(tf.cast(image, tf.float32), (resize, resize),
                            method='bilinear', antialias=True)  # [R, R, 3] in [0, 255]
    if not random_crop and resize > size:
      offset = (resize - size) // 2
      image = image[offset:offset + size, offset:offset + size]
    image = tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)
    out = size if not random_crop else resize
    return tf.ensure_shape(image, (out, out, 3))

  return preprocess


# Datasets by name -> a function of the config returning the per-example preprocessing.
PREPROCESSORS: dict[str, Callable[[ml_collections.ConfigDict], Callable[[dict], tf.Tensor]]] = {
    'mnist': _mnist_like,
    'fashion_mnist': _mnist_like,
    'celeb_a': _natural_image,       # Sec. 4.3: aligned CelebA, 178x218 faces.
    'lsun/bedroom': _natural_image,  # Sec. 4.3, App. F.
    'imagenet2012': _natural_image,  # Sec. 4.4 (tfds manual download).
    'imagenet2012_dogs': _natural_image,  # Sec. 4.4: the dog-breed subset at 256x256.
    'folder': _natural_image,        # config.image_folder / dataset 'folder:PATH'.
}

# The dog-breed subset of ImageNet-1k (Sec. 4.4: "a dog-breed subset of ImageNet, using the
# wordNet IDs provided by Vinyals et al. (2016)", whose "ImageNet dogs" task uses the 118
# dog-breed classes). Vinyals et al.'s own file cannot be read here (no network), so the IDs
# are derived, and listed in full: they are the 118 ILSVRC-2012 classes that are WordNet
# hyponyms of n02084071 'dog, domestic dog', which in the standard (sorted-WNID) class order
# are exactly classes 151-268 - lines 152-269 of tensorflow_datasets/datasets/imagenet2012/
# labels.txt (n02085620 'Chihuahua' ... n02113978 'Mexican hairless'; line 270, n02114367,
# is 'timber wolf', not a dog).
IMAGENET_DOG_WNIDS = (
    'n02085620', 'n02085782', 'n02085936', 'n02086079', 'n02086240', 'n02086646', 'n02086910',
    'n02087046', 'n02087394', 'n02088094', 'n02088238', 'n02088364', 'n02088466', 'n02088632',
    'n02089078', 'n02089867', 'n02089973', 'n02090379', 'n02090622', 'n02090721', 'n02091032',
    'n02091134', 'n02091244', 'n02091467', 'n02091635', 'n02091831', 'n02092002', 'n02092339',
    'n02093256', 'n02093428', 'n02093647', 'n02093754', 'n02093859', 'n02093991', 'n02094114',
    'n02094258', 'n02094433', 'n02095314', 'n02095570', 'n02095889', 'n02096051', 'n02096177',
    'n02096294', 'n02096437', 'n02096585', 'n02097047', 'n02097130', 'n02097209', 'n02097298',
    'n02097474', 'n02097658', 'n02098105', 'n02098286', 'n02098413', 'n02099267', 'n02099429',
    'n02099601', 'n02099712', 'n02099849', 'n02100236', 'n02100583', 'n02100735', 'n02100877',
    'n02101006', 'n02101388', 'n02101556', 'n02102040', 'n02102177', 'n02102318', 'n02102480',
    'n02102973', 'n02104029', 'n02104365', 'n02105056', 'n02105162', 'n02105251', 'n02105412',
    'n02105505', 'n02105641', 'n02105855', 'n02106030', 'n02106166', 'n02106382', 'n02106550',
    'n02106662', 'n02107142', 'n02107312', 'n02107574', 'n02107683', 'n02107908', 'n02108000',
    'n02108089', 'n02108422', 'n02108551', 'n02108915', 'n02109047', 'n02109525', 'n02109961',
    'n02110063', 'n02110185', 'n02110341', 'n02110627', 'n02110806', 'n02110958', 'n02111129',
    'n02111277', 'n02111500', 'n02111889', 'n02112018', 'n02112137', 'n02112350', 'n02112706',
    'n02113023', 'n02113186', 'n02113624', 'n02113712', 'n02113799', 'n02113978',
)

# Registered names that read another tfds dataset, keeping the examples whose label is in a
# WordNet-ID list (filtered with tf ops on the label, before the image is decoded).
LABEL_SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    'imagenet2012_dogs': ('imagenet2012', IMAGENET_DOG_WNIDS),
}
FOLDER_PREFIX = 'folder:'


def _dataset_name(config: ml_collections.ConfigDict) -> str:
  """The registry key: 'folder' for an image folder, else the dataset."""
  return 'folder' if _image_folder(config) else config.dataset


def _image_folder(config: ml_collections.ConfigDict) -> str:
  folder = config.get('image_folder', '')
  if not folder and config.dataset.startswith(FOLDER_PREFIX):
    folder = config.dataset[len(FOLDER_PREFIX):]
  return folder


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared tfds builder of `config.dataset`."""
  tfds_dir = config.get('tfds_data_dir') or None
  if config.dataset not in PREPROCESSORS or config.dataset == 'folder':
    raise ValueError(
        f'Unknown dataset {config.dataset!r}. Use one of '
        f'{sorted(set(PREPROCESSORS) - {"folder"})} (--config.dataset=NAME), a folder of '
        'MNIST-format IDX files or an .npz file (--config.data_dir=PATH), or a folder of '
        f'JPEG/PNG images (--config.image_folder=PATH or --config.dataset={FOLDER_PREFIX}PATH).')
  name = LABEL_SUBSETS[config.dataset][0] if config.dataset in LABEL_SUBSETS else config.dataset
  builder = tfds.builder(name, data_dir=tfds_dir)
  # A no-op once prepared; downloads when online. ImageNet needs its manual download.
  try:
    builder.download_and_prepare()
  except AssertionError as e:
    if 'Manual directory' not in str(e):
      raise
    manual = paths.as_path(builder.data_dir).parents[1] / 'downloads' / 'manual'
    raise FileNotFoundError(
        f'{name} needs its manual download: put the files its tfds page names (for '
        'imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar, from '
        f'https://image-net.org/download-images after registering) in {manual}, or in '
        'DIR/downloads/manual and pass --config.tfds_data_dir=DIR. The first run then '
        'prepares the dataset (hours for ImageNet).') from e
  return builder


def _preprocessor(config: ml_collections.ConfigDict) -> Callable[[dict], tf.Tensor]:
  return PREPROCESSORS[_dataset_name(config)](config)


def _label_mask(builder: tfds.core.DatasetBuilder, wnids: tuple[str, ...]) -> np.ndarray:
  """bool [num_classes]: True for the classes named by `wnids` in the builder's label order."""
  label = builder.info.features['label']
  mask = np.zeros(label.num_classes, bool)
  mask[[label.str2int(w) for w in wnids]] = True
  return mask


def _folder_files(folder: str) -> list[str]:
  """The JPEG/PNG files under `folder` (recursively), sorted by path.

  Listed through epath, so that a remote folder (gs://...) keeps its scheme in every file
  name (`pathlib` would join 'gs://b/x' into 'gs:/b/x/...'); tf.io reads the files.
  """
  suffixes = ('.jpg', '.jpeg', '.png')
  files = sorted(os.fspath(root / name) for root, _, names in paths.as_path(folder).walk()
                 for name in names if name.lower().endswith(suffixes))
  if not files:
    raise ValueError(f'No JPEG or PNG files in {folder!r} (searched it and its subfolders).')
  return files


def _decode_file(path: tf.Tensor) -> dict:
  image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
  return {'image': tf.ensure_shape(image, (None, None, 3))}


def _examples(config: ml_collections.ConfigDict, split: str, process_index: int = 0,
              process_count: int = 1) -> tf.data.Dataset:
  """This process's shard of `split` as example dicts with a decoded uint8 'image', in order.

  An image folder has one split, 'train' (all its files, sorted by path); the files are
  sharded before they are read. A label subset is filtered on the label before its images are
  decoded, then sharded.
  """
  folder = _image_folder(config)
  if folder:
    if split != 'train':
      raise ValueError(f'An image folder has only the split "train", not {split!r}.')
    ds = tf.data.Dataset.from_tensor_slices(_folder_files(folder))
    ds = ds.shard(process_count, process_index)
    return ds.map(_decode_file, num_parallel_calls=tf.data.AUTOTUNE)
  builder = get_builder(config)
  if config.dataset not in LABEL_SUBSETS:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds.shard(process_count, process_index)
  keep = tf.constant(_label_mask(builder, LABEL_SUBSETS[config.dataset][1]))  # [classes]
  image_feature = builder.info.features['image']
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.filter(lambda ex: tf.gather(keep, ex['label']))
  ds = ds.shard(process_count, process_index)

  def decode(ex):
    return {**ex, 'image': image_feature.decode_example(ex['image'])}

  return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


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


@functools.lru_cache(maxsize=None)
def _count_subset(dataset: str, tfds_dir: str, split: str) -> int:
  """Examples of a label subset: one label-only pass (images not decoded), once per process."""
  config = ml_collections.ConfigDict({'dataset': dataset, 'data_dir': '',
                                      'tfds_data_dir': tfds_dir})
  builder = get_builder(config)
  keep = tf.constant(_label_mask(builder, LABEL_SUBSETS[dataset][1]))
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  labels = ds.map(lambda ex: ex['label'], num_parallel_calls=tf.data.AUTOTUNE)
  count = labels.reduce(np.int64(0), lambda n, label: n + tf.cast(tf.gather(keep, label),
                                                                   tf.int64))
  return int(count)


def num_examples(config: ml_collections.ConfigDict, split: str = 'train') -> int:
  """Examples in `split` (all processes together).

  For a label subset (`imagenet2012_dogs`) this counts by one pass over the labels, unless
  `config.num_train_examples` gives the train split's size.
  """
  folder = _image_folder(config)
  if folder:
    return len(_folder_files(folder))
  if config.dataset in LABEL_SUBSETS:
    if split == 'train' and config.get('num_train_examples', 0):
      return config.num_train_examples
    return _count_subset(config.dataset, config.get('tfds_data_dir') or '', split)
  return _split_size(get_builder(config), split)


def steps_per_epoch(config: ml_collections.ConfigDict, process_count: int = 1) -> int:
  """Steps in one pass over the train split (every process takes the same number)."""
  local_batch = local_batch_size(config.batch_size, process_count)
  steps = (num_examples(config) // process_count) // local_batch
  if steps == 0:
    raise ValueError(f'The train split has {num_examples(config)} examples, fewer than one '
                     f'global batch of {config.batch_size}; lower --config.batch_size.')
  return steps


def _epoch_seed(seed: int, epoch: int, process_index: int) -> int:
  return int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0] >> 1)


def _random_crop(config: ml_collections.ConfigDict
                 ) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None:
  """(image [R, R, C], seed int64 [2]) -> its random [S, S, C] crop; None without random_crop.

  Stateless (`tf.image.stateless_random_crop`): the crop is a function of the seed only.
  """
  if not config.get('random_crop', False):
    return None
  size = config.image_size

  def crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_crop(image, (size, size, image.shape[-1]), seed=seed)

  return crop


def train_batches(config: ml_collections.ConfigDict, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[np.ndarray]:
  """Endless host-local train batches [batch_size // process_count, H, W, C], from `start_step`.

  Args:
    config: the experiment config (dataset, image size, batch size, seed).
    start_step: the global step of the first batch; earlier batches are skipped, so a resumed
      run continues the same data order.
    process_index, process_count: this host's shard.
  Yields:
    float32 numpy arrays in [-1, 1].
  """
  local_batch = local_batch_size(config.batch_size, process_count)
  per_epoch = steps_per_epoch(config, process_count)
  examples_per_epoch = per_epoch * local_batch

  ds = _examples(config, 'train', process_index, process_count)
  ds = ds.map(_preprocessor(config), num_parallel_calls=tf.data.AUTOTUNE)
  if config.get('cache', True):
    ds = ds.cache()
  buffer = config.get('shuffle_buffer', 0) or num_examples(config)
  crop = _random_crop(config)

  epoch, skip = divmod(start_step, per_epoch)
  while True:
    epoch_seed = _epoch_seed(config.seed, epoch, process_index)
    epoch_ds = ds.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
    epoch_ds = epoch_ds.take(examples_per_epoch)
    if crop is not None:
      # Example i of this epoch is cropped with the stateless seed (epoch seed, i).
      epoch_ds = epoch_ds.enumerate().map(
          lambda i, image, s=epoch_seed: crop(image, tf.stack([tf.constant(s, tf.int64), i])),
          num_parallel_calls=tf.data.AUTOTUNE)
    epoch_ds = epoch_ds.skip(skip * local_batch)
    epoch_ds = epoch_ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from epoch_ds.as_numpy_iterator()
    epoch, skip = epoch + 1, 0


def split_arrays(config: ml_collections.ConfigDict,
                 split: str = 'test') -> tuple[np.ndarray, np.ndarray]:
  """A whole split as (images [N, H, W, C] float32 in [-1, 1], labels [N] int32), in order.

  For evaluation, classifier training and the semi-supervised experiment on small datasets.
  """
  ds = _examples(config, split)
  preprocess = _preprocessor(config)
  ds = ds.map(lambda ex: (preprocess(ex), tf.cast(ex['label'], tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
  images, labels = zip(*ds.as_numpy_iterator())
  return np.concatenate(images), np.concatenate(labels)
