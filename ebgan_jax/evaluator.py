"""Scores a generator while it trains, and for `python -m ebgan_jax.evaluate`.

`Evaluator(config)` picks the scores the dataset has:
- MNIST-like data (one channel, 28 or 32 pixels): App. C's offline classifier, trained once
  per dataset and training settings into a shared cache (`evaluate.classifier_cache_dir`):
  I' and IS (App. C), the classifier-feature Frechet distance and KID against the test split,
  precision and recall (Kynkäänniemi et al., 2019) in the classifier's feature space, and the
  number of digit classes covered;
- natural images with `config.inception_weights`: Inception FID and KID against as many real
  train images (`ebgan_jax.inception`);
- otherwise nothing (said once, with what to set).
Generation and scoring run on the device; only the scores come back. Every evaluation of a
run draws the same `num_samples` latents from one fixed key (`eval_key`), so successive
scores compare the generator and nothing else, before and after a resume, in the training
loop and from the command line.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebgan_jax import data, evaluate, paths, sample, scores, step

EVAL_STREAM = 0xE7A1  # Folded into the run's seed for the eval key (a stream of its own).


def eval_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The key every evaluation of the run draws its latents from."""
  return jax.random.fold_in(jax.random.key(config.seed), EVAL_STREAM)


def is_mnist_like(config: ml_collections.ConfigDict) -> bool:
  return config.channels == 1 and config.image_size in (28, 32)


class Evaluator:
  """Scores of `num_samples` generated images; `kind` is 'classifier', 'inception' or 'none'."""

  def __init__(self, config: ml_collections.ConfigDict, *,
               classifier_dir: paths.PathLike | None = None, num_samples: int | None = None,
               log: Callable[[str], None] = logging.info):
    self.config = config
    self.settings = evaluate.eval_settings(config)
    self.num_samples = int(num_samples or self.settings.num_samples)
    self.kind = 'none'
    if is_mnist_like(config):
      self.kind = 'classifier'
      self.classifier_dir = paths.as_path(classifier_dir or evaluate.classifier_cache_dir(config))
      self.params, self.meta = evaluate.get_classifier(config, self.classifier_dir)
      self.reference = evaluate.reference_statistics(self.params, config)
    elif config.get('inception_weights', ''):
      from ebgan_jax import inception  # pylint: disable=g-import-not-at-top
      self.kind = 'inception'
      self._inception = inception
      self.extractor = inception.FeatureExtractor.from_file(
          config.inception_weights, batch_size=min(200, self.settings.batch_size))
      self.real_features = self.extractor(self._real_images())
    else:
      log('No scores during training: this run has no offline classifier (MNIST-like data '
          'only) and no Inception weights; set --config.inception_weights=FILE.npz '
          '(ebgan_jax/inception.py says how to make it) for FID and KID.')

  @property
  def enabled(self) -> bool:
    return self.kind != 'none'

  def _real_images(self) -> np.ndarray:
    """The first `num_samples` train images of the run's data order (the FID's real side)."""
    batches = data.train_batches(self.config, process_index=0, process_count=1)
    real, count = [], 0
    while count < self.num_samples:
      batch = next(batches)
      real.append(batch)
      count += len(batch)
    return np.concatenate(real)[:self.num_samples]

  def score_images(self, images: np.ndarray) -> dict[str, Any]:
    """The scores of generated images (uint8 [N, H, W, C], or floats in [-1, 1]): floats,
    and for the classifier also the `class_histogram` (a list of counts)."""
    if self.kind == 'classifier':
      return evaluate.score_images(self.params, images, self.reference)
    if self.kind == 'inception':
      fake = self.extractor(images)
      if not np.all(np.isfinite(fake)):
        return {'fid': float('nan'), 'kid': float('nan')}
      kid = scores.kernel_inception_distance(jnp.asarray(fake, jnp.float32),
                                             jnp.asarray(self.real_features, jnp.float32))
      return {'fid': self._inception.fid(self.real_features, fake), 'kid': float(kid)}
    return {}

  def generate(self, trainer: step.Trainer, state: Any) -> np.ndarray:
    """The run's `num_samples` evaluation images (uint8), from the fixed `eval_key`."""
    return sample.generate_images(trainer, state, self.num_samples, eval_key(self.config),
                                  batch_size=self.settings.batch_size)

  def __call__(self, trainer: step.Trainer, state: Any) -> dict[str, float]:
    """The float scores of the generator in `state` (EMA params when the run keeps them)."""
    if not self.enabled:
      return {}
    return {k: float(v) for k, v in self.score_images(self.generate(trainer, state)).items()
            if not isinstance(v, list)}

  def real_scores(self) -> dict[str, float]:
    """What real data scores (a yardstick): `num_samples` real train digits against the test
    split, for the classifier scores; {} for the others."""
    if self.kind != 'classifier':
      return {}
    result = evaluate.real_digit_scores(self.params, self.config, self.reference,
                                        self.classifier_dir, self.num_samples)
    return {k: float(v) for k, v in result.items() if k not in ('class_histogram',)}


def format_scores(values: dict[str, float]) -> str:
  """'I' 8.91  IS 8.84  classifier FID 3.2 ...' in a fixed order, for logs."""
  names = {'i_prime': "I'", 'inception_score': 'IS', 'classifier_fid': 'classifier FID',
           'fid': 'FID', 'kid': 'KID', 'precision': 'precision', 'recall': 'recall',
           'modes_covered': 'modes'}
  return '  '.join(f'{label} {values[k]:.4g}' for k, label in names.items() if k in values)
