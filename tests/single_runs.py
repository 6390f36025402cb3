"""Shared by several tests: tiny Figure 4 (c) and Ladder configs for end-to-end runs, and
reference runs for the tests of programs that train many runs at once (populations, padded
populations): each run alone, exactly as `train.train_and_evaluate` steps it."""

import jax
import numpy as np

from ebgan_jax import sharding, step


def tiny_fc_config(tfds_data_dir: str, total_steps: int):
  """EBGAN-PT at widths 32 (nLayerG 2), batch 8, one step a call, every cadence 2, unscored."""
  from configs import mnist_fc  # pylint: disable=g-import-not-at-top
  config = mnist_fc.get_config('ebgan_pt')
  config.model.size_g = config.model.size_d = 32
  config.model.n_layer_g = 2
  config.batch_size, config.total_steps, config.steps_per_call = 8, total_steps, 1
  config.log_every_steps = config.checkpoint_every_steps = config.sample_every_steps = 2
  config.num_sample_images = 4
  config.eval_every_steps = 0  # Scores while training: evaluator_test.py.
  config.tfds_data_dir = tfds_data_dir
  return config


def tiny_ladder_config(tfds_data_dir: str, total_steps: int):
  """Table 2's Ladder at widths 32-16-10, batches of 8, 20 labels, every cadence 2."""
  from configs import mnist_ssl  # pylint: disable=g-import-not-at-top
  config = mnist_ssl.get_config('ladder,runlocal')
  config.model.ladder_widths = (32, 16, 10)
  config.total_steps = total_steps
  config.log_every_steps = config.checkpoint_every_steps = config.sample_every_steps = 2
  config.batch_size = config.ssl.labelled_batch_size = 8
  config.ssl.num_labelled = 20
  config.tfds_data_dir = tfds_data_dir
  return config


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
