"""Sampling: image grids, latent interpolations, and generated images from a checkpoint.

  python -m ebgan_jax.sample --workdir=DIR [--checkpoint=latest|best|STEP] \
      [--num_samples=64] [--out=samples.png | --out=samples.npz] [--interpolate]

writes `--num_samples` images from the checkpoint: a PNG grid when `--out` ends in .png, the
uint8 array `images` [N, H, W, C] when it ends in .npz. With `--interpolate`, each of
`--num_samples` rows walks from one random latent to another along the great circle
(spherical interpolation, the usual path between Gaussian latents) in
`--interpolation_steps` images. The run may live on another machine's device count or in a
bucket (gs://...). `--latent_seed` picks the latents (default: the run's evaluation latents).
"""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ebgan_jax import checkpoint, metric_writer, paths, step, workdir as workdir_lib


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


CHECKPOINT_CHOICES = 'latest, best or a step number'


def resolve_checkpoint(ckpt: checkpoint.Checkpointer, which: str | int) -> int | None:
  """The step `which` names ('latest', 'best' or a step), None for 'latest' (the newest
  that restores). Raises ValueError, naming what exists, for a best or a step not kept."""
  which = str(which)
  if which == 'latest':
    return None
  if which == 'best':
    best = ckpt.best_step()
    if best is None:
      raise ValueError(f'{ckpt.directory} holds no best checkpoint: the run kept none '
                       '(train with --config.eval_every_steps=N and '
                       '--config.eval.best_metric=eval/classifier_fid, for example).')
    return best
  if not which.isdigit():
    raise ValueError(f'--checkpoint={which}: use {CHECKPOINT_CHOICES}.')
  if int(which) not in ckpt.all_steps():
    raise ValueError(f'{ckpt.directory} has no checkpoint of step {which}; it keeps '
                     f'{ckpt.all_steps()}.')
  return int(which)


def load_generator(workdir: paths.PathLike, which: str | int = 'latest'
                   ) -> tuple[step.Trainer, step.TrainState, int]:
  """The run's trainer and the state of checkpoint `which` ('latest', 'best' or a step).

  The state is restored onto this process's devices, whatever the device count the run
  was trained on (`checkpoint.Checkpointer.restore`). Raises if there is no checkpoint.
  """
  config = workdir_lib.load_config(workdir)
  trainer = step.Trainer(config)
  target = jax.eval_shape(trainer.create_state, jax.random.key(0))
  ckpt = checkpoint.for_run(config, workdir)
  try:
    chosen = resolve_checkpoint(ckpt, which)
    if chosen is None:
      state, chosen = ckpt.restore_latest(target)
    else:
      state = ckpt.restore(chosen, target)
  finally:
    ckpt.close()
  if chosen is None:
    raise FileNotFoundError(f'No restorable checkpoint in {workdir}/checkpoints; train the run '
                            'first (python -m ebgan_jax.main --workdir=...).')
  return trainer, state, chosen


def generate_images(trainer: step.Trainer, state: step.TrainState, num: int, key: jax.Array,
                    batch_size: int = 500) -> np.ndarray:
  """`num` images from G in inference mode (EMA params if enabled), uint8 [num, H, W, C]."""
  gen = trainer.jit_generate
  out = []
  for i, start in enumerate(range(0, num, batch_size)):
    z_key, noise_key = jax.random.split(jax.random.fold_in(key, i))
    z = trainer.sample_latents(z_key, min(batch_size, num - start))
    out.append(to_uint8(gen(trainer.sample_params(state), state.g.batch_stats, z, noise_key)))
  return np.concatenate(out)


def slerp(z0: jax.Array, z1: jax.Array, num: int) -> jax.Array:
  """`num` points from z0 [D] to z1 [D] along the great circle between them, [num, D].

  Spherical interpolation keeps the norm of Gaussian latents near sqrt(D), where p_z puts
  its mass; the straight line between them passes through lower norms. Equal directions fall
  back to the straight line.
  """
  t = jnp.linspace(0.0, 1.0, num)[:, None]  # [num, 1]
  cos = jnp.dot(z0, z1) / (jnp.linalg.norm(z0) * jnp.linalg.norm(z1))
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  sin = jnp.sin(omega)
  safe = jnp.where(sin > 1e-6, sin, 1.0)
  spherical = (jnp.sin((1 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / safe
  return jnp.where(sin > 1e-6, spherical, (1 - t) * z0 + t * z1)


def interpolations(trainer: step.Trainer, state: step.TrainState, rows: int, columns: int,
                   key: jax.Array) -> np.ndarray:
  """uint8 [rows, columns, H, W, C]: each row G(slerp(z_a, z_b)) for a random pair."""
  z = trainer.sample_latents(key, 2 * rows)  # [2 rows, D]
  path = jax.vmap(lambda a, b: slerp(a, b, columns))(z[:rows], z[rows:])  # [rows, cols, D]
  images = trainer.jit_generate(trainer.sample_params(state), state.g.batch_stats,
                                path.reshape(rows * columns, -1))
  return to_uint8(images).reshape(rows, columns, *images.shape[1:])


def write_images(out: paths.PathLike, images: np.ndarray, num_cols: int | None = None) -> None:
  """A PNG grid (`out` ends in .png) or the uint8 array `images` (.npz) at `out`."""
  out = paths.as_path(out)
  if out.suffix == '.png':
    flat = images.reshape(-1, *images.shape[-3:])
    metric_writer.write_png(out, image_grid(flat, num_cols))
  elif out.suffix == '.npz':
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images)
    paths.write_atomic(out, buffer.getvalue())
  else:
    raise ValueError(f'--out={out}: name a .png (an image grid) or a .npz (the arrays) file.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from ebgan_jax import evaluator  # pylint: disable=g-import-not-at-top
  trainer, state, chosen = load_generator(FLAGS.workdir, FLAGS.checkpoint)
  key = (evaluator.eval_key(trainer.config) if FLAGS.latent_seed < 0
         else jax.random.key(FLAGS.latent_seed))
  if FLAGS.interpolate:
    images = interpolations(trainer, state, FLAGS.num_samples, FLAGS.interpolation_steps, key)
    write_images(FLAGS.out, images, num_cols=FLAGS.interpolation_steps)
    what = f'{FLAGS.num_samples} interpolations of {FLAGS.interpolation_steps} images'
  else:
    images = generate_images(trainer, state, FLAGS.num_samples, key)
    write_images(FLAGS.out, images)
    what = f'{len(images)} images {images.shape[1:]}'
  print(f'Wrote {what} from the checkpoint of step {chosen} to {FLAGS.out}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'Workdir of a trained run (local or gs://...).',
                      required=True)
  flags.DEFINE_string('checkpoint', 'latest', f'Which checkpoint: {CHECKPOINT_CHOICES}.')
  flags.DEFINE_integer('num_samples', 64, 'Images to generate (with --interpolate: rows).')
  flags.DEFINE_string('out', 'samples.png', 'Output file: .png (an image grid) or .npz '
                      '(uint8 array "images").')
  flags.DEFINE_integer('latent_seed', -1, "Seed of the latents; -1: the run's evaluation "
                       'latents (ebgan_jax.evaluator.eval_key), as its scores use.')
  flags.DEFINE_bool('interpolate', False, 'Rows of spherical interpolations between random '
                    'latent pairs instead of independent samples.')
  flags.DEFINE_integer('interpolation_steps', 10, 'Images per interpolation row.')
  FLAGS = flags.FLAGS
  app.run(main)
