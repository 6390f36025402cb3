"""The offline MNIST classifier of App. C, which the modified inception score I' is computed with.

App. C only says "a regular 3-layer ConvNet trained on MNIST" (on "the entire MNIST training
set"). Here it is three 3x3 conv layers and a linear head, no batch norm or dropout:

  input [B, 32, 32, 1] in [-1, 1]
  conv 3x3, 32  -> ReLU -> max-pool 2x2           [B, 16, 16, 32]
  conv 3x3, 64  -> ReLU -> max-pool 2x2           [B, 8, 8, 64]
  conv 3x3, 128 -> ReLU -> max-pool 2x2, flatten  [B, 2048]  <- `features` (Frechet distance)
  dense 10                                        [B, 10]    <- logits; softmax gives p(y|x)

A global-average-pooled head (128 features) was tried first and learns too slowly for a short
CPU run: 92-93% test accuracy after 2-3 epochs on the embedded digits, against 97% for this
head with the same budget.
Training: Adam, learning rate 1e-3 with a cosine decay to 0, cross-entropy; none of this
is in the paper.

Input size. The grid-search models use MNIST zero-padded to 32x32 (App. D, "Other details"),
so the classifier works at 32x32. 28x28 digits are padded by 2 pixels on each side with the
background value -1 (pixel 0 scaled to [-1, 1]) before training and before prediction, so
both real 28x28 digits and generated 32x32 samples are classifiable.

The trainer takes numpy arrays (images [N, H, W, 1] float in [-1, 1], labels [N] int), so
the input pipeline can feed it. `python -m ebgan_jax.classifier --out_dir=DIR` trains one on
the embedded digits and saves it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags

from ebgan_jax import paths
from ebgan_jax.data import idx

INPUT_SIZE = 32       # Height and width the network sees.
NUM_CLASSES = 10
FEATURE_DIM = 4 * 4 * 128  # Width of the penultimate layer returned by `features`.
BACKGROUND = -1.0     # MNIST's background pixel 0, scaled to [-1, 1].
ARCHITECTURE = 'conv32-pool-conv64-pool-conv128-pool-dense10'  # Stored in the metadata.
LEARNING_RATE = 1e-3  # Adam's initial rate, decayed to 0 (cosine); the paper gives none.
EVAL_BATCH = 500      # Images per forward pass in `predict_*` (bounds memory).

PARAMS_SUBDIR = 'params'     # Orbax checkpoint of the parameter pytree, inside the directory.
META_FILE = 'classifier.json'  # Metadata beside it; written last, so it marks a finished save.
EMBEDDED_MNIST_DIR = idx.EMBEDDED_MNIST_DIR
TRAIN_COMMAND = 'python -m ebgan_jax.classifier --out_dir={path}'


class ClassifierCheckpointError(FileNotFoundError):
  """A classifier checkpoint is missing, incomplete, or does not match this architecture."""


class ConvNet(nn.Module):
  """App. C's "regular 3-layer ConvNet": three conv layers and a linear softmax head."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Maps images [B, 32, 32, 1] to (logits [B, num_classes], features [B, 2048])."""
    h = x
    for i, width in enumerate((32, 64, 128)):
      h = nn.relu(nn.Conv(width, (3, 3), padding='SAME', name=f'conv_{i}')(h))
      h = nn.max_pool(h, (2, 2), strides=(2, 2))  # halves H and W: 32 -> 16 -> 8 -> 4
    feats = h.reshape(h.shape[0], -1)  # [B, 4 * 4 * 128]
    logits = nn.Dense(self.num_classes, name='head')(feats)
    return logits, feats


def to_classifier_input(images: jax.Array | np.ndarray) -> jax.Array:
  """Brings images [N, 28 or 32, same, 1] in [-1, 1] to the classifier's [N, 32, 32, 1].

  28x28 images are padded with 2 background pixels (-1) on each side; 32x32 pass unchanged.
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim != 4 or images.shape[-1] != 1 or images.shape[1] != images.shape[2]:
    raise ValueError(f'Expected grey images [N, H, W, 1], got shape {images.shape}.')
  size = images.shape[1]
  if size == INPUT_SIZE:
    return images
  if size == 28:
    pad = (INPUT_SIZE - size) // 2
    return jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=BACKGROUND)
  raise ValueError(f'The classifier takes 28x28 or 32x32 images, got {size}x{size}.')


@jax.jit
def init_params(key: jax.Array) -> Any:
  """Fresh variables {'params': ...} of `ConvNet` (jitted: compiled once, not op by op)."""
  return ConvNet().init(key, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 1), jnp.float32))


@jax.jit
def _apply(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  return ConvNet().apply(params, images)


def _apply_batched(params: Any, images: jax.Array | np.ndarray) -> tuple[jax.Array, jax.Array]:
  """(logits [N, 10], features [N, 2048]), computed `EVAL_BATCH` images at a time.

  The last chunk is padded to `EVAL_BATCH` so that every call reuses one compiled function.
  """
  images = to_classifier_input(images)  # [N, 32, 32, 1]
  n = images.shape[0]
  if n == 0:
    raise ValueError('No images to classify.')
  padded = jnp.pad(images, ((0, -n % EVAL_BATCH), (0, 0), (0, 0), (0, 0)))
  outs = [_apply(params, padded[i:i + EVAL_BATCH]) for i in range(0, n, EVAL_BATCH)]
  return (jnp.concatenate([o[0] for o in outs])[:n], jnp.concatenate([o[1] for o in outs])[:n])


def apply_in_chunks(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`_apply_batched` as one traceable function: `lax.map` over chunks of `EVAL_BATCH`.

  For use inside a jitted caller (the grid's scoring program), where a Python loop of chunks
  would unroll into one copy of the network per chunk.
  """
  images = to_classifier_input(images)
  n = images.shape[0]
  if n == 0:
    raise ValueError('No images to classify.')
  padded = jnp.pad(images, ((0, -n % EVAL_BATCH), (0, 0), (0, 0), (0, 0)))
  chunks = padded.reshape(-1, EVAL_BATCH, *padded.shape[1:])
  logits, feats = jax.lax.map(lambda x: ConvNet().apply(params, x), chunks)
  return logits.reshape(-1, logits.shape[-1])[:n], feats.reshape(-1, feats.shape[-1])[:n]


def predict_logits(params: Any, images: jax.Array | np.ndarray) -> jax.Array:
  """Classifier logits, shape [N, 10], for images [N, 28 or 32, same, 1] in [-1, 1]."""
  return _apply_batched(params, images)[0]


def predict_probs(params: Any, images: jax.Array | np.ndarray) -> jax.Array:
  """p(y|x), shape [N, 10], for images [N, 28 or 32, same, 1] in [-1, 1].

  For the scores, `jax.nn.log_softmax(predict_logits(...))` gives exact log-probabilities
  (see `scores.modified_inception_score`'s `log_probs`).
  """
  return jax.nn.softmax(predict_logits(params, images), axis=-1)


def features(params: Any, images: jax.Array | np.ndarray) -> jax.Array:
  """Penultimate-layer activations, shape [N, 2048], for the classifier Frechet distance.

  A full-rank covariance of these needs more than 2048 images per side (see
  `scores.frechet_distance` on the precision lost with fewer).
  """
  return _apply_batched(params, images)[1]


def accuracy(params: Any, images: jax.Array | np.ndarray, labels: jax.Array | np.ndarray) -> float:
  """Fraction of images whose argmax prediction equals the label."""
  predicted = jnp.argmax(predict_logits(params, images), axis=-1)
  return float(jnp.mean(predicted == jnp.asarray(labels)))


def _make_train_step(optimizer: optax.GradientTransformation):
  """Builds the jitted Adam step on one batch: (params, opt_state, images, labels) -> ..."""

  def loss_fn(params, images, labels):
    logits, _ = ConvNet().apply(params, images)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  # A Python loop over this step, not a `lax.scan` over an epoch: on XLA:CPU a 20-step scan
  # took 205 s (compilation included) against ~0.3 s per step for this jitted step.
  @jax.jit
  def train_step(params, opt_state, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray,
                     test_images: np.ndarray, test_labels: np.ndarray, *, num_epochs: int,
                     batch_size: int, seed: int) -> tuple[Any, float]:
  """Trains the App. C classifier with Adam and cross-entropy; returns it and its test accuracy.

  The learning rate decays from 1e-3 to 0 along a cosine over the whole run.

  Each epoch visits the training set in a fresh order drawn from (seed, epoch) and drops the
  last incomplete batch.

  Args:
    train_images: [N, 28 or 32, same, 1] float in [-1, 1] (28x28 are padded to 32x32 with -1).
    train_labels: [N] ints in [0, 10).
    test_images, test_labels: the held-out split, same formats.
    num_epochs: passes over the training set.
    batch_size: images per Adam step; at most N.
    seed: seeds the initialisation and the data order.
  Returns:
    (variables {'params': ...}, accuracy on the test split in [0, 1]).
  """
  images = np.asarray(to_classifier_input(train_images))  # [N, 32, 32, 1]
  labels = np.asarray(train_labels, np.int32)  # [N]
  if labels.shape != (images.shape[0],):
    raise ValueError(f'{images.shape[0]} training images but labels of shape {labels.shape}.')
  steps = images.shape[0] // batch_size
  if steps == 0:
    raise ValueError(f'batch_size {batch_size} exceeds the {images.shape[0]} training images.')
  params = init_params(jax.random.key(seed))
  optimizer = optax.adam(optax.cosine_decay_schedule(LEARNING_RATE, num_epochs * steps))
  opt_state = optimizer.init(params)
  train_step = _make_train_step(optimizer)
  for epoch in range(num_epochs):
    order = np.random.default_rng([seed, epoch]).permutation(images.shape[0])  # [N]
    for batch in order[:steps * batch_size].reshape(steps, batch_size):  # [batch_size]
      params, opt_state, _ = train_step(params, opt_state, images[batch], labels[batch])
  return params, accuracy(params, test_images, test_labels)


def save_classifier(path: str | os.PathLike, params: Any, meta: dict[str, Any]) -> None:
  """Saves the variables with orbax under `path/params` and `meta` as JSON beside them.

  The JSON also records `input_size`, `num_classes`, `feature_dim` and `architecture`, which
  `load_classifier` checks. It is written after the parameters, so a directory without it
  is an interrupted save. An existing checkpoint at `path` is replaced.

  Args:
    path: a directory (created if needed).
    params: the variables returned by `train_classifier`.
    meta: JSON-serialisable facts to keep, e.g. {'test_accuracy': 0.98, 'num_epochs': 3}.
  """
  path = paths.as_path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / META_FILE).unlink(missing_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path / PARAMS_SUBDIR, params, force=True)
    checkpointer.wait_until_finished()
  meta = dict(meta, input_size=INPUT_SIZE, num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM,
              architecture=ARCHITECTURE)
  paths.write_atomic(path / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + '\n')


def load_classifier(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
  """Loads a classifier saved by `save_classifier`.

  Args:
    path: the directory given to `save_classifier`.
  Returns:
    (variables, meta), meta as read from the JSON file.
  Raises:
    ClassifierCheckpointError: the directory, its metadata or its parameters are missing,
      unreadable, or for another architecture. The message names the command that trains one.
  """
  path = paths.as_path(path)
  fix = f'Train one with `{TRAIN_COMMAND.format(path=path)}`.'
  meta_path = path / META_FILE
  if not meta_path.is_file():
    raise ClassifierCheckpointError(
        f'No classifier checkpoint at {path} ({META_FILE} is missing: never trained, or the '
        f'save was interrupted). {fix}')
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, ValueError) as e:
    raise ClassifierCheckpointError(f'Cannot read {meta_path}: {e}. {fix}') from e
  if not isinstance(meta, dict):
    raise ClassifierCheckpointError(f'{meta_path} holds no JSON object. {fix}')
  expected = dict(input_size=INPUT_SIZE, num_classes=NUM_CLASSES, feature_dim=FEATURE_DIM,
                  architecture=ARCHITECTURE)
  mismatched = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
  if mismatched:
    raise ClassifierCheckpointError(
        f'The classifier at {path} was saved with {mismatched}, but this code expects '
        f'{expected}. {fix}')
  # Shapes and dtypes, placed on this process's first device: without a sharding, orbax
  # would recreate the one it was saved with, which fails on another machine ("topology
  # mismatch", e.g. a classifier trained on a CPU and loaded on a GPU host).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                        jax.eval_shape(init_params, jax.random.key(0)))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(path / PARAMS_SUBDIR, target)
  except Exception as e:  # orbax raises many types (FileNotFoundError, ValueError, ...).
    raise ClassifierCheckpointError(
        f'Cannot restore the classifier parameters from {path / PARAMS_SUBDIR}: '
        f'{type(e).__name__}: {e}. {fix}') from e
  return params, meta


def read_idx_split(folder: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """An IDX split as (images [N, 28, 28, 1] float32 in [-1, 1], labels [N] int32)."""
  images, labels = idx.read_idx_split(folder, split)
  return images.astype(np.float32) / 127.5 - 1.0, labels.astype(np.int32)


def main(argv: list[str]) -> None:
  """Trains the classifier on an IDX folder (default: the embedded digits) and saves it."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  train_images, train_labels = read_idx_split(FLAGS.idx_dir, 'train')
  test_images, test_labels = read_idx_split(FLAGS.idx_dir, 'test')
  start = time.time()
  params, test_accuracy = train_classifier(
      train_images, train_labels, test_images, test_labels, num_epochs=FLAGS.num_epochs,
      batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  seconds = time.time() - start
  save_classifier(FLAGS.out_dir, params, dict(
      test_accuracy=test_accuracy, train_seconds=round(seconds, 1), num_epochs=FLAGS.num_epochs,
      batch_size=FLAGS.batch_size, seed=FLAGS.seed, idx_dir=str(FLAGS.idx_dir),
      num_train=int(train_images.shape[0]), num_test=int(test_images.shape[0])))
  print(f'test accuracy {test_accuracy:.4f} on {test_images.shape[0]} images after '
        f'{FLAGS.num_epochs} epochs ({seconds:.1f} s); saved to {FLAGS.out_dir}')


if __name__ == '__main__':
  flags.DEFINE_string('out_dir', None, 'Where to save the classifier (local or gs://).',
                      required=True)
  flags.DEFINE_string('idx_dir', str(EMBEDDED_MNIST_DIR),
                      'Folder of MNIST-format IDX files (train and t10k).')
  flags.DEFINE_integer('num_epochs', 3, 'Passes over the train split.')
  flags.DEFINE_integer('batch_size', 32, 'Batch size.')
  flags.DEFINE_integer('seed', 0, 'Seed of the initialisation and the data order.')
  FLAGS = flags.FLAGS
  app.run(main)
