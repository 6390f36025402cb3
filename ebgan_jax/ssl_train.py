"""The semi-supervised data and training loop of one run (Sec. 4.2, App. D).

`SSLData` holds a run's labelled subset, unlabelled set and test split in host memory and
draws its batches; `train_and_evaluate(config, workdir)` trains one run with checkpoints and
resumption like `ebgan_jax.train` (`config.steps_per_call` steps per jitted call, one
`lax.scan` over batches drawn on the host) and reports the test error of the clean path
(Rasmus et al.'s classifier) at every checkpoint and at the end. `ebgan_jax.ssl_population`
trains many runs in one program from the same data.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ebgan_jax import config_checks, data, metric_writer, paths, sample, semi_supervised
from ebgan_jax import sharding, train as train_lib
from ebgan_jax.data import ssl as ssl_data
from ebgan_jax import workdir as workdir_lib

RESULTS_FILE = 'results.json'
Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train/test images, labels


def load_splits(config: ml_collections.ConfigDict) -> Splits:
  """(train images [N, H, W, C] in [-1, 1], train labels [N], test images, test labels)."""
  return (*data.split_arrays(config, 'train'),
          *data.split_arrays(config, 'test'))


class SSLData:
  """The labelled subset, the unlabelled set and the test split, in host memory.

  Batches are pure functions of (seed, step) (`ssl_data.stream_indices`), so a resumed run sees
  the same batches; each process takes its slice of every global batch. `splits` (from
  `load_splits`) lets many runs share one copy of the data.
  """

  def __init__(self, config: ml_collections.ConfigDict, splits: Splits | None = None):
    self.config = config
    images, labels, self.test_images, self.test_labels = splits or load_splits(config)
    self.labelled_idx = ssl_data.balanced_labelled_subset(
        labels, config.ssl.num_labelled, config.ssl.labelled_seed)  # [num_labelled]
    # Train-set indices of the unlabelled set (every image in Rasmus et al.'s code).
    self.unlabelled_idx = (np.arange(len(labels)) if config.ssl.unlabelled_includes_labelled
                           else np.delete(np.arange(len(labels)), self.labelled_idx))
    self.train_images, self.train_labels = images, labels

  def train_indices(self, step: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Train-set indices of the global batches of steps step .. step + num_steps - 1:
    (labelled [K, B_l], unlabelled [K, B])."""
    cfg = self.config
    lab = ssl_data.stream_indices(len(self.labelled_idx), cfg.ssl.labelled_batch_size, step,
                                  (cfg.seed, 0), num_steps)
    unl = ssl_data.stream_indices(len(self.unlabelled_idx), cfg.batch_size, step,
                                  (cfg.seed, 1), num_steps)
    return self.labelled_idx[lab], self.unlabelled_idx[unl]

  def batches(self, step: int, num_steps: int, mesh: jax.sharding.Mesh
              ) -> tuple[semi_supervised.LabelledBatch, jax.Array]:
    """The global (labelled, unlabelled) batches of `num_steps` steps from `step`, stacked
    [K, B, ...] and sharded over `mesh` (this process holds its slice of each)."""
    lab, unl = (_process_slice(i) for i in self.train_indices(step, num_steps))
    return ((sharding.global_batches(self.train_images[lab], mesh),
             sharding.global_batches(self.train_labels[lab], mesh)),
            sharding.global_batches(self.train_images[unl], mesh))


def _process_slice(indices: np.ndarray) -> np.ndarray:
  """This process's contiguous part of each global batch's indices [K, B]."""
  local = data.local_batch_size(indices.shape[-1], jax.process_count())
  return indices[..., jax.process_index() * local:(jax.process_index() + 1) * local]


def results_record(config: ml_collections.ConfigDict, error: float, num_test: int,
                   train_seconds: float, **extra) -> dict[str, Any]:
  """What `RESULTS_FILE` holds for a finished run (the Table 2 driver reads it)."""
  return {'variant': config.variant, 'num_labelled': config.ssl.num_labelled,
          'seed': config.seed, 'labelled_seed': config.ssl.labelled_seed,
          'dataset': config.dataset, 'steps': config.total_steps,
          'test_error': error, 'test_error_percent': 100.0 * error, 'num_test': num_test,
          'train_seconds_this_session': train_seconds, 'device': str(jax.devices()[0]),
          'device_count': jax.device_count(), **extra}


def write_results(workdir: paths.PathLike, results: dict[str, Any]) -> None:
  if jax.process_index() == 0:
    paths.write_atomic(paths.as_path(workdir) / RESULTS_FILE,
                       json.dumps(results, indent=2, sort_keys=True))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike
                       ) -> tuple[semi_supervised.SSLState, dict[str, Any]]:
  """Trains `config` in `workdir` (resuming from its newest checkpoint); returns the final
  state and the results written to `workdir/results.json` (test error of the clean path),
  or {} when stopped by a signal (a checkpoint is saved; the same call resumes)."""
  workdir = paths.as_path(workdir)
  mesh = sharding.make_mesh(config.ssl.get('num_devices', 0) or None)
  config_checks.validate(config, driver='semi_supervised', process_count=jax.process_count(),
                         device_count=mesh.devices.size, known_datasets=data.known_datasets())
  workdir_lib.record_config(workdir, config, write=jax.process_index() == 0)
  num_steps = config.total_steps
  steps_per_call = config.get('steps_per_call', 1)
  trainer = semi_supervised.Trainer(config, num_steps)
  splits = SSLData(config)

  state, start, ckpt, train_key, sample_key = train_lib.init_or_restore(
      trainer.create_state, config, workdir, mesh)

  train_steps = semi_supervised.jit_train_steps(trainer, mesh)  # K steps a call, K = 1 too.
  cadences = (config.log_every_steps, config.checkpoint_every_steps, config.sample_every_steps)
  writer = metric_writer.MetricWriter(workdir / 'logs')
  buffer = train_lib.MetricsBuffer()  # Same non-finite checks.
  sample_z = (trainer.sample_latents(sample_key, config.num_sample_images)
              if trainer.is_ebgan else None)
  generate = jax.jit(trainer.generate) if trainer.is_ebgan else None

  def write_samples(step_number: int) -> None:
    if generate is None:
      return
    images = sample.to_uint8(generate(state.g.params, state.g.batch_stats, sample_z))
    if jax.process_index() == 0:
      grid = sample.image_grid(images)
      metric_writer.write_png(workdir / 'samples' / f'step_{step_number:07d}.png', grid)
      writer.write_image(step_number, 'samples', grid)

  def test_error() -> float:
    return trainer.evaluate(state, splits.test_images, splits.test_labels)

  def save(step_number: int) -> None:
    means = buffer.flush()  # Never save a state whose losses were not finite.
    if means is not None:
      writer.write_scalars(step_number, {f'train/{k}': v for k, v in means.items()})
    train_lib.assert_state_finite(state, step_number)  # Nor a state that is itself non-finite.
    ckpt.save(step_number, state)
    writer.write_scalars(step_number, {'eval/test_error': test_error()})

  logging.info('%s: %d labels, training %d steps (from step %d) on %d device(s), up to %d '
               'steps per call.', config.variant, config.ssl.num_labelled, num_steps, start,
               jax.device_count(), steps_per_call)
  t_start, s_start = time.time(), start
  done, calls = start, 0
  try:
    with train_lib.StopSignal() as stop:
      while done < num_steps:
        # A full call of `steps_per_call` steps, or single steps up to the next log,
        # checkpoint or sample step (two programs, whatever the cadences).
        k = train_lib.call_length(done, num_steps, steps_per_call, cadences)
        k = k if k == steps_per_call else 1
        labelled, unlabelled = splits.batches(done, k, mesh)
        state, metrics = train_steps(state, labelled, unlabelled, train_key)
        done += k
        calls += 1
        buffer.add(done, metrics, num_steps=k)
        if done % config.log_every_steps == 0 or done == num_steps:
          train_lib.log_progress(buffer, writer, done, num_steps, t_start, s_start)
        if stop.should_stop(calls):
          save(done)
          logging.warning('Stopped by %s at step %d; checkpoint saved. Run the same command '
                          'to resume.', stop.received or 'a signal to another process', done)
          return state, {}
        if done % config.checkpoint_every_steps == 0 or done == num_steps:
          save(done)
        if done % config.sample_every_steps == 0 or done == num_steps:
          write_samples(done)
    error = test_error()
    train_seconds = time.time() - t_start
  finally:
    writer.close()
    ckpt.close()
  results = results_record(config, error, len(splits.test_labels), train_seconds)
  write_results(workdir, results)
  logging.info('Test error (clean path, %d test images): %.2f%%', len(splits.test_labels),
               100.0 * error)
  return state, results
