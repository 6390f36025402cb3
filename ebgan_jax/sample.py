"""Sampling: image grids, and N generated images from a run's latest checkpoint.

  python -m ebgan_jax.sample --workdir=DIR --num=N --out=FILE.npz

writes `images` (uint8 [N, H, W, C]) to FILE.npz.
"""

from __future__ import annotations

import io
import math

import jax
import numpy as np
from absl import app, flags

from ebgan_jax import checkpoint, paths, step, workdir as workdir_lib


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, num_cols: int | None = None, pad: int = 1) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
  n, h, w, c = images.shape
  num_cols = num_cols or math.ceil(math.sqrt(n))
  num_rows = math.ceil(n / num_cols)
  grid = np.zeros((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c), np.uint8)
  for i in range(n):
    r, col = divmod(i, num_cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def load_generator(workdir: paths.PathLike) -> tuple[step.Trainer, step.TrainState, int]:
  """The run's trainer and its latest restorable state (raises if there is no checkpoint).

  The state is restored onto this process's devices, whatever the device count the run
  was trained on (`checkpoint.Checkpointer.restore`).
  """
  config = workdir_lib.load_config(workdir)
  trainer = step.Trainer(config)
  target = jax.eval_shape(trainer.create_state, jax.random.key(0))
  ckpt = checkpoint.Checkpointer(paths.as_path(workdir) / 'checkpoints')
  try:
    state, restored_step = ckpt.restore_latest(target)
  finally:
    ckpt.close()
  if restored_step is None:
    raise FileNotFoundError(f'No restorable checkpoint in {workdir}/checkpoints; train the run '
                            'first (python -m ebgan_jax.main --workdir=...).')
  return trainer, state, restored_step


def generate_images(trainer: step.Trainer, state: step.TrainState, num: int, key: jax.Array,
                    batch_size: int = 500) -> np.ndarray:
  """`num` images from G in inference mode (EMA params if enabled), uint8 [num, H, W, C]."""
  gen = jax.jit(trainer.generate)
  out = []
  for i, start in enumerate(range(0, num, batch_size)):
    z_key, noise_key = jax.random.split(jax.random.fold_in(key, i))
    z = trainer.sample_latents(z_key, min(batch_size, num - start))
    out.append(to_uint8(gen(trainer.sample_params(state), state.g.batch_stats, z, noise_key)))
  return np.concatenate(out)


def main(argv):
  del argv
  trainer, state, restored_step = load_generator(FLAGS.workdir)
  images = generate_images(trainer, state, FLAGS.num, jax.random.key(FLAGS.seed))
  out = paths.as_path(FLAGS.out)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, images=images)
  paths.write_atomic(out, buffer.getvalue())
  print(f'Wrote {len(images)} images {images.shape[1:]} from step {restored_step} to {out}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run.', required=True)
  flags.DEFINE_integer('num', 64, 'Number of images.')
  flags.DEFINE_string('out', 'samples.npz', 'Output .npz file (key "images").')
  flags.DEFINE_integer('seed', 0, 'Seed of the latents.')
  FLAGS = flags.FLAGS
  app.run(main)
