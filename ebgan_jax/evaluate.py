"""Scores of generated digits with App. C's offline classifier, and the evaluation CLI.

  python -m ebgan_jax.evaluate --workdir=DIR --checkpoint=latest|best|STEP [--num_samples=N]
  python -m ebgan_jax.evaluate --workdir=A --workdir=B ... [--out=comparison.png]

The first scores one checkpoint of a run trained by `ebgan_jax.main` and writes the scores
to `DIR/eval.json` and TensorBoard (`eval/...` in `DIR/logs`); the second prints one
Markdown table of every run's scores at its best and latest checkpoints (`ebgan_jax.compare`)
and writes their sample grids side by side to a PNG. The scores (`score_images`): I'
(Sec. 4.1 / App. C), the inception score, the Frechet distance and KID in the classifier's
feature space against the test split, precision and recall there, and the class histogram;
on natural images, Inception FID and KID (`ebgan_jax.evaluator`).

The classifier ("a regular 3-layer ConvNet trained off-line using the entire MNIST training
set", App. C) is trained once per dataset and cached (`get_classifier`): the first caller
trains and saves it under a file lock, every later caller (another shard of a grid included)
loads it. Its test accuracy is printed and stored in its metadata and in every score.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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
                     classifier_batch_size=128, classifier_train_examples=0, classifier_seed=0,
                     classifier_cache_dir='', best_metric='')
# Where trained classifiers are kept when config.eval.classifier_cache_dir is '' (or
# $EBGAN_JAX_CACHE is set): one per dataset and training settings, shared by every run.
DEFAULT_CACHE = '~/.cache/ebgan_jax'

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
    logging.info('Training the offline classifier of %s (App. C; once per dataset, then '
                 'cached in %s): %d epochs.', config.data_dir or config.dataset, directory,
                 settings.classifier_epochs)
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
  features: jax.Array | None = None  # [N, F]; for KID and precision/recall (None: not scored).
  kid_self: jax.Array | None = None  # `scores.kid_self_term(features)`, computed once.
  radii: jax.Array | None = None     # `scores.knn_radii(features)`, computed once.

  def __post_init__(self):
    if self.factor is None:
      self.factor = jax.jit(scores.covariance_factor)(jnp.asarray(self.sigma))
    if self.features is not None and self.kid_self is None:
      self.kid_self = jax.jit(scores.kid_self_term)(self.features)
      self.radii = jax.jit(scores.knn_radii)(self.features)


jax.tree_util.register_dataclass(
    Reference, data_fields=['mu', 'sigma', 'factor', 'features', 'kid_self', 'radii'],
    meta_fields=['num_images'])


def reference_from_images(params: Any, images: np.ndarray | jax.Array) -> Reference:
  """Mean, covariance and covariance factor of the classifier features of `images`."""
  feats = classifier.features(params, images)
  mu, sigma = scores.feature_statistics(feats)
  # From the features themselves when they are fewer than the feature width (the embedded
  # test split: 2,000 digits < 2,048), which is exact where a square root is not.
  return Reference(mu, sigma, len(images), jax.jit(scores.covariance_factor)(sigma, feats),
                   feats)


def reference_statistics(params: Any, config: ml_collections.ConfigDict) -> Reference:
  """Mean and covariance of the classifier features of the whole test split."""
  images, _ = data.split_arrays(config, 'test')
  return reference_from_images(params, images)


@functools.partial(jax.jit, static_argnames='min_count')
def _scores(params: Any, images: jax.Array, reference: Reference, min_count: int
            ) -> dict[str, jax.Array]:
  """Every score of `score_images` in one program, on the default device (the GPU there)."""
  logits, feats = classifier.apply_in_chunks(params, images)
  log_probs = jax.nn.log_softmax(logits, axis=-1)  # [N, K]
  probs = jnp.exp(log_probs)
  mu, sigma = scores.feature_statistics(feats)
  histogram = scores.class_histogram(probs, NUM_CLASSES)
  # The Frechet distance is symmetric: the factor with fewer rows (the generated side's own
  # features, when fewer than the reference's) sets the size of its eigenproblem.
  if feats.shape[0] < reference.factor.shape[0]:
    fid = scores.frechet_distance(reference.mu, reference.sigma, mu, sigma,
                                  factor2=scores.covariance_factor(sigma, feats))
  else:
    fid = scores.frechet_distance(mu, sigma, reference.mu, reference.sigma,
                                  factor2=reference.factor)
  out = {
      'i_prime': scores.modified_inception_score(probs, log_probs),
      'inception_score': scores.inception_score(probs, log_probs),
      'classifier_fid': fid,
      'class_histogram': histogram,
      'modes_covered': scores.modes_covered(histogram, min_count),
  }
  if reference.features is not None:
    out['kid'] = scores.kernel_inception_distance(feats, reference.features,
                                                  self_term2=reference.kid_self)
    out['precision'], out['recall'] = scores.precision_recall(
        reference.features, feats, real_radii=reference.radii)
  return out


FLOAT_SCORES = ('i_prime', 'inception_score', 'classifier_fid', 'kid', 'precision', 'recall')


def score_images(params: Any, images: np.ndarray | jax.Array, reference: Reference
                 ) -> dict[str, Any]:
  """App. C's scores of generated digits, and the distances to the real digits beyond it.

  One jitted program (compiled once per number of images) on the default device; images
  already on the device (the grid's samples) stay there.

  Args:
    params: the classifier's variables.
    images: generated digits [N, H, W, 1], float in [-1, 1] or uint8 in [0, 255].
    reference: the test split's features and their statistics.
  Returns:
    {'i_prime' (App. C's I'), 'inception_score', 'classifier_fid' (the Frechet distance in
     the classifier's feature space: not comparable with Inception FIDs), 'kid' (the
     unbiased kernel distance in that space), 'precision', 'recall' (Kynkäänniemi et al.,
     k = 3, in that space; 'kid', 'precision', 'recall' only when the reference keeps its
     features), 'class_histogram' (list of K ints), 'modes_covered' (classes holding at
     least N / (10 K) samples, so that stray misclassifications do not count as a mode)};
    floats are NaN if the images are not finite.
  """
  if isinstance(images, jax.Array) and len(images.devices()) > 1:
    # E.g. a population's samples, replicated over a mesh: score one copy, on one device.
    images = jax.device_put(images, jax.devices()[0])
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 127.5 - 1.0
  n = images.shape[0]
  names = FLOAT_SCORES if reference.features is not None else FLOAT_SCORES[:3]
  if not bool(jnp.all(jnp.isfinite(images))):
    return {**{k: float('nan') for k in names}, 'class_histogram': [0] * NUM_CLASSES,
            'modes_covered': 0}
  result = jax.device_get(_scores(params, images, reference, max(1, n // (10 * NUM_CLASSES))))
  return {**{k: float(result[k]) for k in names},
          'class_histogram': [int(c) for c in result['class_histogram']],
          'modes_covered': int(result['modes_covered'])}


def classifier_cache_dir(config: ml_collections.ConfigDict) -> epath.Path:
  """Where `config`'s offline classifier is kept, shared by every run that trains on the data.

  `config.eval.classifier_cache_dir` (default `$EBGAN_JAX_CACHE`, else ~/.cache/ebgan_jax;
  may be gs://...) / `classifier-<dataset>-<digest>`. The digest covers what the classifier
  depends on: the data source (an IDX folder's or .npz file's path, or the tfds name) and
  the training settings, so a smoke test's 1-epoch classifier never stands in for the real one.
  """
  settings = eval_settings(config)
  root = settings.classifier_cache_dir or os.environ.get('EBGAN_JAX_CACHE', DEFAULT_CACHE)
  source = str(paths.as_path(config.data_dir)) if config.data_dir else config.dataset
  key = json.dumps([source, config.image_size, settings.classifier_epochs,
                    settings.classifier_batch_size, settings.classifier_train_examples,
                    settings.classifier_seed, classifier.ARCHITECTURE])
  name = paths.as_path(config.data_dir).name if config.data_dir else config.dataset
  digest = hashlib.sha256(key.encode()).hexdigest()[:10]
  return paths.as_path(root) / f'classifier-{name.replace("/", "_")}-{digest}'


def real_digit_scores(params: Any, config: ml_collections.ConfigDict, reference: Reference,
                      directory: paths.PathLike, num: int) -> dict[str, Any]:
  """The scores of `num` real train digits against the test split: what a perfect generator
  of this dataset would score (cached beside the classifier, `real_scores-<num>.json`)."""
  path = paths.as_path(directory) / f'real_scores-{num}.json'
  if path.exists():
    return json.loads(path.read_text())
  images, _ = data.split_arrays(config, 'train')
  result = score_images(params, images[:num], reference)
  result['num_images'] = int(min(num, len(images)))
  paths.write_atomic(path, json.dumps(result, indent=2, sort_keys=True) + '\n')
  return result


def evaluate_workdir(workdir: paths.PathLike, classifier_dir: paths.PathLike | None = None,
                     num_samples: int | None = None, checkpoint: str = 'latest',
                     latent_seed: int = -1) -> dict[str, Any]:
  """Scores one checkpoint of the run in `workdir`; writes eval.json and eval/... scalars.

  Args:
    workdir: a run trained by `ebgan_jax.main`.
    classifier_dir: where the offline classifier is (or is trained and cached); default
      the shared cache (`classifier_cache_dir`).
    num_samples: generated images to score; default `config.eval.num_samples`.
    checkpoint: 'latest', 'best' or a step.
    latent_seed: seed of the latents; -1 (default) the run's evaluation latents, so the
      scores equal those logged while it trained.
  Returns:
    The scores, with `step` (the checkpoint's) and, for the classifier scores,
    `classifier_test_accuracy`.
  """
  from ebgan_jax import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  workdir = paths.as_path(workdir)
  trainer, state, step = sample.load_generator(workdir, checkpoint)
  scorer = evaluator_lib.Evaluator(trainer.config, classifier_dir=classifier_dir,
                                   num_samples=num_samples)
  if not scorer.enabled:
    raise ValueError(f'{workdir} cannot be scored: no offline classifier for its data and no '
                     '--config.inception_weights.')
  images = (scorer.generate(trainer, state) if latent_seed < 0 else
            sample.generate_images(trainer, state, scorer.num_samples,
                                   jax.random.key(latent_seed)))
  result = scorer.score_images(images)
  result.update(step=int(step), num_samples=scorer.num_samples, checkpoint=str(checkpoint))
  if scorer.kind == 'classifier':
    result.update(classifier_test_accuracy=float(scorer.meta.get('test_accuracy', np.nan)),
                  classifier_dir=str(scorer.classifier_dir))
  paths.write_atomic(workdir / EVAL_FILE, json.dumps(result, indent=2, sort_keys=True) + '\n')
  writer = metric_writer.MetricWriter(workdir / 'logs')
  try:
    writer.write_scalars(step, {f'eval/{k}': v for k, v in result.items()
                                if k in FLOAT_SCORES + ('fid', 'modes_covered')})
  finally:
    writer.close()
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if len(FLAGS.workdir) == 1 and FLAGS.checkpoint:
    result = evaluate_workdir(FLAGS.workdir[0], FLAGS.classifier_dir or None,
                              FLAGS.num_samples or None, FLAGS.checkpoint, FLAGS.latent_seed)
    print(json.dumps(result, indent=2, sort_keys=True))
    workdir = paths.as_path(FLAGS.workdir[0])
    print(f'Wrote {workdir / EVAL_FILE} and eval/... scalars to {workdir / "logs"}')
    return
  from ebgan_jax import compare  # pylint: disable=g-import-not-at-top
  rows, grids = compare.compare_runs(FLAGS.workdir, classifier_dir=FLAGS.classifier_dir or None,
                                     num_samples=FLAGS.num_samples or None)
  print(compare.markdown_table(rows))
  out = FLAGS.out or ('comparison.png' if len(FLAGS.workdir) > 1 else '')
  if out:
    compare.write_sample_grids(out, grids)
    print(f'\nSample grids side by side: {out}')


if __name__ == '__main__':
  flags.DEFINE_multi_string('workdir', None, 'Workdir of a run trained by ebgan_jax.main '
                            '(local or gs://); repeat it to compare runs side by side.',
                            required=True)
  flags.DEFINE_string('checkpoint', '', "One run: which checkpoint to score ('latest', 'best' "
                      "or a step; '' = both best and latest, as a table). Several runs: "
                      'each is scored at its best and its latest checkpoint.')
  flags.DEFINE_string('classifier_dir', '', 'The offline classifier (trained there if '
                      'missing); default the shared cache (config.eval.classifier_cache_dir).')
  flags.DEFINE_integer('num_samples', 0, 'Generated images to score (0: config.eval).')
  flags.DEFINE_integer('latent_seed', -1, "Seed of the latents; -1: the run's evaluation "
                       'latents, as the scores logged while it trained.')
  flags.DEFINE_string('out', '', 'Table mode: a PNG file for the runs\' sample grids side '
                      'by side (default comparison.png with several runs, none with one).')
  FLAGS = flags.FLAGS
  app.run(main)
