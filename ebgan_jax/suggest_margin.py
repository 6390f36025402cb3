"""Margin advisor, App. E's tip: fit D's auto-encoder alone to real data, read off the energy.

  python -m ebgan_jax.suggest_margin --config=configs/mnist_grid.py:margin_sweep [--max_steps=N]

App. E: "one can run D (the auto-encoder) alone on the real sample dataset and monitor the
loss. When it converges, the consequential loss implies a rough limit on how well such
setting of D is capable to fit the dataset. This usually suggests a good start for a
hyper-parameter searching on m." This trains `config`'s discriminator (same architecture,
optimizer, learning rate and batch size) to minimise the mean real energy D(x) (Eq. 13) --
the first term of Eq. (1) without the hinge -- until the energy plateaus, then prints the
distribution of D(x) over the held-out test split.

The rule for the suggested range (ours; App. E gives only the principle):
  low  = the 95th percentile of the converged real energies. With m below the energy of real
         digits, D's hinge [m - D(G(z))]^+ is already 0 for generated digits as good as real
         ones, so the margin would stop separating anything data-like; m should exceed what D
         can reach on almost all real data.
  high = max(4 x median, 2 x low). App. E asks the two terms of Eq. (1) to be of similar
         size: the real term cannot drop below the converged energy, the fake term is at most
         m, so m a few times the real energy keeps them balanced; much larger m gives the
         strong opposing gradients App. E warns about (Fig. 9: m = 32 degrades).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags

from ebgan_jax import data, losses, models, step

PERCENTILES = (5, 25, 50, 75, 95)


@dataclasses.dataclass
class MarginAdvice:
  steps: int                          # Steps trained.
  plateaued: bool                     # False: stopped at max_steps still improving.
  window_energies: list[float]        # Mean training energy of each window of steps.
  percentiles: dict[int, float]       # Real (test split) energy percentiles.
  mean: float
  low: float                          # Suggested margin range (see the module docstring).
  high: float

  def report(self) -> str:
    pct = '  '.join(f'p{p}={v:.3f}' for p, v in self.percentiles.items())
    state = 'plateaued' if self.plateaued else 'NOT plateaued (raise --max_steps)'
    return (f'Auto-encoder trained alone for {self.steps} steps ({state}).\n'
            f'Real energy D(x) on the test split: mean={self.mean:.3f}  {pct}\n'
            f'Suggested margin range: m in [{self.low:.2f}, {self.high:.2f}] '
            '(low = p95 of the real energy; high = max(4 x median, 2 x low)).')


def suggest_range(energies: np.ndarray) -> tuple[float, float]:
  """(low, high) of the suggested margin from converged real energies (module docstring)."""
  energies = np.asarray(energies, np.float64)
  low = float(np.percentile(energies, 95))
  high = max(4.0 * float(np.median(energies)), 2.0 * low)
  return low, high


def fit_autoencoder(config: ml_collections.ConfigDict, *, max_steps: int = 5000,
                    window: int = 200, tolerance: float = 0.01,
                    batches=None) -> tuple[object, list[float], bool, int]:
  """Trains D alone on real batches until the windowed mean energy improves < `tolerance`.

  Returns:
    (D's variables, mean energy of each window, whether it plateaued, steps trained).
  """
  if config.loss.kind != 'ebgan':
    raise ValueError('The margin advisor needs an EBGAN config (loss.kind = "ebgan"): only '
                     'the auto-encoder discriminator has an energy and a margin.')
  discriminator = models.get_discriminator(config)
  tx = step.make_optimizer(config.optim.optim_d, config.optim.lr_d, config, max_steps)
  image_shape = models.image_shape(config)
  key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(key)
  variables = discriminator.init({'params': init_key, 'dropout': init_key},
                                 jnp.zeros((2, *image_shape)), train=False)
  params, stats = variables['params'], variables.get('batch_stats', {})
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, stats, opt_state, x, step_number):
    def objective(p):
      (x_rec, _), updates = discriminator.apply(
          {'params': p, 'batch_stats': stats}, x, train=True, mutable=['batch_stats'],
          rngs={'dropout': jax.random.fold_in(train_key, step_number)})
      return jnp.mean(losses.energy(x, x_rec)), updates.get('batch_stats', stats)
    (loss, new_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  batches = iter(batches if batches is not None else data.train_batches(config))
  windows, plateaued, s = [], False, 0
  while s < max_steps and not plateaued:
    total = 0.0
    count = min(window, max_steps - s)
    for _ in range(count):
      params, stats, opt_state, loss = train_step(params, stats, opt_state,
                                                  jnp.asarray(next(batches)), s)
      total += loss
      s += 1
    windows.append(float(total) / count)
    if len(windows) >= 2:
      previous, current = windows[-2], windows[-1]
      plateaued = previous - current < tolerance * abs(previous)
  return {'params': params, 'batch_stats': stats}, windows, plateaued, s


def real_energies(config: ml_collections.ConfigDict, variables, images: np.ndarray,
                  batch_size: int = 500) -> np.ndarray:
  """D(x) in inference mode (BN running statistics, no dropout) for images [N, H, W, C].

  D's variables are an argument of the jitted function, not constants folded into it: XLA:CPU
  (jax 0.10.2) returned NaN energies for an all-zero D held as constants.
  """
  discriminator = models.get_discriminator(config)

  @jax.jit
  def energy(variables, x):
    x_rec, _ = discriminator.apply(variables, x, train=False)
    return losses.energy(x, x_rec)

  return np.concatenate([np.asarray(energy(variables, jnp.asarray(images[i:i + batch_size])))
                         for i in range(0, len(images), batch_size)])


def suggest_margin(config: ml_collections.ConfigDict, *, max_steps: int = 5000,
                   window: int = 200, tolerance: float = 0.01,
                   max_eval_images: int = 0) -> MarginAdvice:
  """Fits D alone (App. E), then summarises the real test-split energies and suggests m."""
  variables, windows, plateaued, steps = fit_autoencoder(
      config, max_steps=max_steps, window=window, tolerance=tolerance)
  images, _ = data.split_arrays(config, 'test')
  if max_eval_images:
    images = images[:max_eval_images]
  energies = real_energies(config, variables, images)
  low, high = suggest_range(energies)
  return MarginAdvice(steps=steps, plateaued=plateaued, window_energies=windows,
                      percentiles={p: float(np.percentile(energies, p)) for p in PERCENTILES},
                      mean=float(np.mean(energies)), low=low, high=high)


def main(argv):
  del argv
  advice = suggest_margin(FLAGS.config, max_steps=FLAGS.max_steps, window=FLAGS.window,
                          tolerance=FLAGS.tolerance)
  print(advice.report())
  if FLAGS.json:
    print(json.dumps(dataclasses.asdict(advice)))


if __name__ == '__main__':
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'An EBGAN config, e.g. '
                                  'configs/mnist_grid.py:margin_sweep.', lock_config=True)
  flags.DEFINE_integer('max_steps', 5000, 'Most steps to train the auto-encoder.')
  flags.DEFINE_integer('window', 200, 'Steps per window of the plateau test.')
  flags.DEFINE_float('tolerance', 0.01, 'Plateau: a window improves the mean energy by less '
                     'than this fraction of the previous one.')
  flags.DEFINE_bool('json', False, 'Also print the advice as JSON.')
  FLAGS = flags.FLAGS
  app.run(main)
