"""Reference runs for the tests of programs that train many runs at once (populations,
padded populations): each run alone, exactly as `train.train_and_evaluate` steps it."""

import jax
import numpy as np

from ebgan_jax import sharding, step


def random_batches(config, num: int) -> np.ndarray:
  """`num` batches of uniform noise in [-1, 1], [num, B, H, W, C] float32 (seed 0)."""
  rng = np.random.default_rng(0)
  shape = (num, config.batch_size, config.image_size, config.image_size, config.channels)
  return rng.uniform(-1, 1, size=shape).astype(np.float32)


def single_run(config, batches, mesh):
  """(initial state, final state, per-step metrics) of `config` trained alone on `batches`,
  at its own widths and with its own optimizer, with train.py's key split."""
  trainer = step.Trainer(config, len(batches))
  init_key, train_key, _ = jax.random.split(jax.random.key(config.seed), 3)
  state = jax.jit(trainer.create_state)(init_key)
  initial = jax.device_get(state)
  train_step = step.jit_train_step(trainer, mesh)
  history = []
  for images in batches:
    state, metrics = train_step(state, sharding.global_batch(images, mesh), train_key)
    history.append(jax.device_get(metrics))
  return initial, jax.device_get(state), history
