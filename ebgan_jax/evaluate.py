"""Scores of generated digits with App. C's offline classifier: I', IS, classifier FID, modes.

  python -m ebgan_jax.evaluate --workdir=DIR [--classifier_dir=DIR] [--num_samples=N]

scores a run trained by `ebgan_jax.main`: it draws N digits from the run's latest checkpoint,
and writes I' (Sec. 4.1 / App. C), the inception score, the Frechet distance in the
classifier's feature space against the test split, and the class histogram to
`DIR/eval.json` and to TensorBoard (`eval/...` keys in `DIR/logs`).

The classifier ("a regular 3-layer ConvNet trained off-line using the entire MNIST training
set", App. C) is trained once per dataset and cached (`get_classifier`): the first caller
trains and saves it under a file lock, every later caller (another shard of a grid included)
loads it. Its test accuracy is printed and stored in its metadata and in every score.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath

from ebgan_jax import classifier, data, metric_writer, paths, sample, scores

NUM_CLASSES = 10
# Used when a config has no `eval` block (e.g. configs/mnist_fc.py runs).
EVAL_DEFAULTS = dict(num_samples=10000, batch_size=500, classifier_epochs=5,
                     classifier_batch_size=128, classifier_train_examples=0, classifier_seed=0)
EVAL_FILE = 'eval.json'


def eval_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.eval` with the defaults filled in."""
  settings = dict(EVAL_DEFAULTS)
  if 'eval' in config:
    settings.update(config.eval.to_dict())
  return ml_collections.ConfigDict(settings)


def get_classifier(config: ml_collections.ConfigDict, directory: str | os.PathLike
                   ) -> tuple[Any, dict[str, Any]]:
  """The offline classifier of `config`'s dataset, loaded from `directory` or trained there.

  Training uses the dataset's whole train split (App. C), or its first
  `eval.classifier_train_examples` digits when that is > 0 (tests), and reports the accuracy
  on the test split. Concurrent callers (grid shards on one shared workdir) serialise on a
  lock file beside `directory`: one trains, the others then load its checkpoint.

  Returns:
    (variables, meta); meta holds `test_accuracy`, the dataset and the training settings.
  """
  directory = paths.as_path(directory)
  # On a remote directory there is no lock: concurrent first callers may each train one
  # (the same result; the last save wins).
  with paths.file_lock(directory.parent / f'.{directory.name}.lock'):
    if (directory / classifier.META_FILE).exists():
      params, meta = classifier.load_classifier(directory)
      logging.info('Loaded the offline classifier from %s (test accuracy %.4f).', directory,
                   meta.get('test_accuracy', float('nan')))
      return params, meta
    settings = eval_settings(config)
    train_images, train_labels = data.split_arrays(config, 'train')
    if settings.classifier_train_examples > 0:
      train_images = train_images[:settings.classifier_train_examples]
      train_labels = train_labels[:settings.classifier_train_examples]
    test_images, test_labels = data.split_arrays(config, 'test')
    start = time.time()
    params, accuracy = classifier.train_classifier(
        train_images, train_labels, test_images, test_labels,
        num_epochs=settings.classifier_epochs, batch_size=settings.classifier_batch_size,
        seed=settings.classifier_seed)
    meta = dict(test_accuracy=float(accuracy), dataset=config.dataset, data_dir=config.data_dir,
                num_train=int(len(train_images)), num_test=int(len(test_images)),
                num_epochs=settings.classifier_epochs,
                batch_size=settings.classifier_batch_size, seed=settings.classifier_seed,
                train_seconds=round(time.time() - start, 1))
    classifier.save_classifier(directory, params, meta)
  print(f'Offline classifier trained on {meta["num_train"]} digits of '
        f'{config.data_dir or config.dataset}: test accuracy {accuracy:.4f} on '
        f'{meta["num_test"]} test digits; saved to {directory}', flush=True)
  return params, meta


@dataclasses.dataclass
class Reference:
  """The test split's statistics in the classifier's feature space (for the FID).

  `factor` (L^T L = sigma, `scores.covariance_factor`) is computed once, here, so that each
  scored run needs one symmetric eigendecomposition instead of two; a grid scores hundreds
  of runs against one reference.
  """
  mu: jax.Array      # [F]
  sigma: jax.Array   # [F, F]
  num_images: int
  factor: jax.Array | None = None  # [R, F]; None: the square root of sigma, computed here.

  def __post_init__(self):
    if self.factor is None:
      self.factor = jax.jit(scores.covariance_factor)(jnp.asarray(self.sigma))


def reference_from_images(params: Any, images: np.ndarray | jax.Array) -> Reference:
  """Mean, covariance and covariance factor of the classifier features of `images`."""
  feats = classifier.features(params, images)
  mu, sigma = scores.feature_statistics(feats)
  # From the features themselves when they are fewer than the feature width (the embedded
  # test split: 2,000 digits < 2,048), which is exact where a square root is not.
  return Reference(mu, sigma, len(images), jax.jit(scores.covariance_factor)(sigma, feats))


def reference_statistics(params: Any, config: ml_collections.ConfigDict) -> Reference:
  """Mean and covariance of the classifier features of the whole test split."""
  images, _ = data.split_arrays(config, 'test')
  return reference_from_images(params, images)


@functools.partial(jax.jit, static_argnames='min_count')
def _scores(params: Any, images: jax.Array, mu_ref: jax.Array, sigma_ref: jax.Array,
            factor_ref: jax.Array, min_count: int) -> dict[str, jax.Array]:
  """Every score of `score_images` in one program, on the default device (the GPU there)."""
  logits, feats = classifier.apply_in_chunks(params, images)
  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [N, K]
  probs = jnp.exp(log_probs)
  mu, sigma = scores.feature_statistics(feats)
  histogram = scores.class_histogram(probs, NUM_CLASSES)
  return {
      'i_prime': scores.modified_inception_score(probs, log_probs),
      'inception_score': scores.inception_score(probs, log_probs),
      'fid': scores.frechet_distance(mu, sigma, mu_ref, sigma_ref, factor2=factor_ref),
      'class_histogram': histogram,
      'modes_covered': scores.modes_covered(histogram, min_count),
  }


def score_images(params: Any, images: np.ndarray | jax.Array, reference: Reference
                 ) -> dict[str, Any]:
  """I', IS, classifier FID and class histogram of generated images.

  One jitted program (compiled once per number of images) on the default device; images
  already on the device (the grid's samples) stay there.

  Args:
    params: the classifier's variables.
    images: generated digits [N, H, W, 1], float in [-1, 1] or uint8 in [0, 255].
    reference: the test split's feature statistics.
  Returns:
    {'i_prime', 'inception_score', 'fid', 'class_histogram' (list of K ints),
     'modes_covered' (classes holding at least N / (10 K) samples, so that stray
     misclassifications do not count as a mode)}; floats are NaN if the images are not finite.
  """
  if isinstance(images, jax.Array) and len(images.devices()) > 1:
    # E.g. a population's samples, replicated over a mesh: score one copy, on one device.
    images = jax.device_put(images, jax.devices()[0])
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1.0
  n = images.shape[0]
  if not bool(jnp.all(jnp.isfinite(images))):
    return {'i_prime': float('nan'), 'inception_score': float('nan'), 'fid': float('nan'),
            'class_histogram': [0] * NUM_CLASSES, 'modes_covered': 0}
  result = jax.device_get(_scores(params, images, reference.mu, reference.sigma,
                                  reference.factor, max(1, n // (10 * NUM_CLASSES))))
  return {
      'i_prime': float(result['i_prime']),
      'inception_score': float(result['inception_score']),
      'fid': float(result['fid']),
      'class_histogram': [int(c) for c in result['class_histogram']],
      'modes_covered': int(result['modes_covered']),
  }


def default_classifier_dir(config: ml_collections.ConfigDict, root: paths.PathLike
                           ) -> epath.Path:
  """`root/classifier-<dataset>`: one cached classifier per dataset."""
  name = paths.as_path(config.data_dir).name if config.data_dir else config.dataset
  return paths.as_path(root) / f'classifier-{name}'


def evaluate_workdir(workdir: paths.PathLike, classifier_dir: paths.PathLike | None = None,
                     num_samples: int | None = None, seed: int = 0) -> dict[str, Any]:
  """Scores the latest checkpoint of the run in `workdir`; writes eval.json and TensorBoard.

  Args:
    workdir: a run trained by `ebgan_jax.main`.
    classifier_dir: where the offline classifier is (or is trained and cached); default
      `workdir/classifier-<dataset>`.
    num_samples: generated digits to score; default `config.eval.num_samples` (10,000).
    seed: seed of the latents.
  Returns:
    The scores, with `step` (the checkpoint's) and `classifier_test_accuracy`.
  """
  workdir = paths.as_path(workdir)
  trainer, state, step = sample.load_generator(workdir)
  config = trainer.config
  settings = eval_settings(config)
  num_samples = num_samples or settings.num_samples
  classifier_dir = classifier_dir or default_classifier_dir(config, workdir)
  params, meta = get_classifier(config, classifier_dir)
  reference = reference_statistics(params, config)
  images = sample.generate_images(trainer, state, num_samples, jax.random.key(seed),
                                  batch_size=settings.batch_size)
  result = score_images(params, images, reference)
  result.update(step=int(step), num_samples=int(num_samples),
                classifier_test_accuracy=float(meta.get('test_accuracy', float('nan'))),
                classifier_dir=str(classifier_dir))
  paths.write_atomic(workdir / EVAL_FILE, json.dumps(result, indent=2, sort_keys=True) + '\n')
  writer = metric_writer.MetricWriter(workdir / 'logs')
  try:
    writer.write_scalars(step, {f'eval/{k}': result[k] for k in
                                ('i_prime', 'inception_score', 'fid', 'modes_covered')})
  finally:
    writer.close()
  return result


def main(argv):
  del argv
  result = evaluate_workdir(FLAGS.workdir, FLAGS.classifier_dir or None,
                            FLAGS.num_samples or None, FLAGS.seed)
  print(json.dumps(result, indent=2, sort_keys=True))
  workdir = paths.as_path(FLAGS.workdir)
  print(f'Wrote {workdir / EVAL_FILE} and eval/... scalars to {workdir / "logs"}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Workdir of a run trained by ebgan_jax.main.',
                      required=True)
  flags.DEFINE_string('classifier_dir', '', 'Cached offline classifier (trained there if '
                      'missing); default WORKDIR/classifier-<dataset>.')
  flags.DEFINE_integer('num_samples', 0, 'Generated digits to score (0: config.eval).')
  flags.DEFINE_integer('seed', 0, 'Seed of the latents.')
  FLAGS = flags.FLAGS
  app.run(main)
