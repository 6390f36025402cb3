"""The training loop: `train_and_evaluate(config, workdir)`.

A long run must not lose work:
- checkpoints every `checkpoint_every_steps` and at the end; a restart resumes from the newest
  checkpoint that restores, with the same data order and RNG stream (both are functions of the
  seed and the step);
- SIGTERM / SIGINT (a preempted VM) finish the current call (`steps_per_call` steps), save,
  and return;
- a non-finite loss stops the run naming the step; no state after it is ever saved; nor is a
  state that is itself non-finite (a step can overflow the params with finite losses), which
  `assert_state_finite` checks before every save;
- a workdir holding a run with another config is refused (`workdir.record_config`);
- the config is checked before any work (`config_checks.validate`);
- the workdir may be local or remote (`gs://...`): every file goes through `ebgan_jax.paths`.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ebgan_jax import checkpoint, config_checks, data, evaluator as evaluator_lib, metric_writer
from ebgan_jax import paths, sample, sharding, step
from ebgan_jax import workdir as workdir_lib


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN or Inf."""


class NonFiniteStateError(NonFiniteLossError):
  """The train state holds NaN or Inf although the losses that produced it were finite."""


@jax.jit
def _state_is_finite(state: Any) -> jax.Array:
  """One fused reduction: whether every floating-point leaf of `state` is finite."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
           if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def assert_state_finite(state: Any, step_number: int) -> None:
  """Raises NonFiniteStateError naming the step and the bad leaves if `state` is not finite.

  The metrics of a step are computed before its update, so they can be finite while the
  update itself overflows (e.g. SGD at a huge learning rate): a loop that checked only the
  losses would save such a state as its last good checkpoint. Call this before every save;
  it costs one jitted reduction over the state (the leaves are named only on failure).
  """
  if bool(_state_is_finite(state)):
    return
  bad = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(state)
         if jnp.issubdtype(x.dtype, jnp.inexact) and not np.isfinite(jax.device_get(x)).all()]
  shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
  raise NonFiniteStateError(
      f'The train state after step {step_number} has non-finite values in {shown}, although '
      'the losses were finite. It was not saved; the last checkpoint written is still the '
      'last good one. Lower the learning rate (an update overflowed), or resume from that '
      'checkpoint with a different seed.')


class StopSignal:
  """Records SIGTERM/SIGINT so the loop can save and return at a step boundary."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C stops at once.
    self.received = signal.Signals(signum).name
    logging.warning('Received %s: saving a checkpoint at the end of this step.', self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def should_stop(self, call_number: int, every: int = 10) -> bool:
    """Whether to save and stop after call `call_number`; all processes get the same answer.

    One process checks its own flag after every call of the train step; several processes
    agree through an all-gather every `every` calls (a checkpoint save is collective, so they
    must stop together).
    """
    if jax.process_count() == 1:
      return self.received is not None
    if call_number % every:
      return False
    flags = multihost_utils.process_allgather(np.array(self.received is not None))
    return bool(np.any(flags))


def log_progress(buffer: MetricsBuffer, writer: metric_writer.MetricWriter, done: int,
                 num_steps: int, t_start: float, s_start: int) -> None:
  """Flushes the buffered metrics (checking them) to the writer and logs a progress line."""
  means = buffer.flush()
  writer.write_scalars(done, {f'train/{k}': v for k, v in means.items()})
  rate = (done - s_start) / max(time.time() - t_start, 1e-9)
  eta = (num_steps - done) / max(rate, 1e-9)
  logging.info('step %d/%d  %.1f steps/s  ETA %s  %s', done, num_steps, rate,
               time.strftime('%H:%M:%S', time.gmtime(eta)),
               '  '.join(f'{k}={v:.4g}' for k, v in sorted(means.items())))


def total_steps(config: ml_collections.ConfigDict) -> int:
  """`config.total_steps` if set, else `num_epochs` passes over the train split."""
  if config.total_steps > 0:
    return config.total_steps
  return config.num_epochs * data.steps_per_epoch(config)


def call_length(start: int, num_steps: int, steps_per_call: int,
                cadences: tuple[int, ...]) -> int:
  """Steps of the next call from step `start`: at most `steps_per_call`, ending at the next
  multiple of any cadence (logging, checkpoints, samples) or at the end of the run, so that
  those happen after exactly the steps they name whatever `steps_per_call` is."""
  length = min(steps_per_call, num_steps - start)
  for every in cadences:
    length = min(length, (start // every + 1) * every - start)
  return length


class MetricsBuffer:
  """Keeps each step's metrics on device until a log point, then checks and averages them."""

  def __init__(self):
    self._pending: list[tuple[int, int, Any]] = []

  def add(self, step_number: int, metrics: Any, num_steps: int = 0) -> None:
    """Metrics of step `step_number`; or, with `num_steps`, of that many steps ending there,
    stacked [num_steps] (one call of `step.jit_train_steps`)."""
    self._pending.append((step_number, num_steps, metrics))

  def flush(self) -> dict[str, float] | None:
    """Mean of the pending metrics; raises NonFiniteLossError naming the first bad step."""
    if not self._pending:
      return None
    ends, lengths, stacks = zip(*self._pending)
    stacks = jax.device_get(stacks)
    self._pending = []
    steps, values = [], []
    for end, length, metrics in zip(ends, lengths, stacks):
      if not length:
        steps.append(end)
        values.append(metrics)
        continue
      for i in range(length):
        steps.append(end - length + 1 + i)
        values.append({k: v[i] for k, v in metrics.items()})
    for step_number, metrics in zip(steps, values):
      bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
      if bad:
        raise NonFiniteLossError(
            f'Non-finite values at step {step_number}: {bad}. Training stopped; no checkpoint '
            'after that step was written. Lower the learning rate or the margin (App. E), or '
            'resume from the last good checkpoint with a different seed.')
    return {k: float(np.mean([m[k] for m in values])) for k in values[0]}


def init_or_restore(create_state: Callable[[jax.Array], Any],
                    config: ml_collections.ConfigDict, workdir: paths.PathLike,
                    mesh: jax.sharding.Mesh):
  """The run's state, restored from its newest good checkpoint or freshly initialised.

  The seed is split once into (init, train, sample) keys; a resumed run gets the same ones.

  Returns:
    (state, first step to run, the Checkpointer, train_key, sample_key).
  """
  init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
  state = jax.jit(create_state, out_shardings=sharding.replicated(mesh))(init_key)
  ckpt = checkpoint.for_run(config, workdir)
  state, restored = ckpt.restore_latest(state)
  start = 0 if restored is None else int(state.step)
  if restored is not None:
    logging.info('Resumed from the checkpoint of step %d.', start)
  return state, start, ckpt, train_key, sample_key


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: paths.PathLike
                       ) -> step.TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint; returns the state."""
  config_checks.validate(config, driver='main', process_count=jax.process_count(),
                         device_count=jax.device_count(),
                         known_datasets=data.known_datasets())
  workdir = paths.as_path(workdir)
  workdir_lib.record_config(workdir, config, write=jax.process_index() == 0)
  num_steps = total_steps(config)
  mesh = sharding.make_mesh()
  trainer = step.Trainer(config, num_steps)

  state, start, ckpt, train_key, sample_key = init_or_restore(
      trainer.create_state, config, workdir, mesh)

  steps_per_call = config.get('steps_per_call', 1)
  train_step = step.jit_train_step(trainer, mesh)
  train_steps = step.jit_train_steps(trainer, mesh) if steps_per_call > 1 else None
  eval_every = config.get('eval_every_steps', 0)
  evaluator = evaluator_lib.Evaluator(config) if eval_every else None
  cadences = (config.log_every_steps, config.checkpoint_every_steps, config.sample_every_steps,
              *((eval_every,) if evaluator and evaluator.enabled else ()))
  batches = data.train_batches(config, start_step=start)
  sample_z = trainer.sample_latents(sample_key, config.num_sample_images)
  generate = trainer.jit_generate
  writer = metric_writer.MetricWriter(workdir / 'logs')
  buffer = MetricsBuffer()

  def write_samples(step_number: int) -> None:
    images = sample.to_uint8(generate(trainer.sample_params(state), state.g.batch_stats,
                                      sample_z))
    if jax.process_index() == 0:
      grid = sample.image_grid(images)
      metric_writer.write_png(workdir / 'samples' / f'step_{step_number:07d}.png', grid)
      writer.write_image(step_number, 'samples', grid)

  def save(step_number: int, scores: dict[str, float] | None = None) -> None:
    buffer_mean = buffer.flush()  # Never save a state whose losses were not finite.
    if buffer_mean is not None:
      writer.write_scalars(step_number, {f'train/{k}': v for k, v in buffer_mean.items()})
    assert_state_finite(state, step_number)  # Nor a state that is itself non-finite.
    ckpt.save(step_number, state, scores)

  def evaluate(step_number: int) -> dict[str, float]:
    """Scores the generator, logs them as eval/..., and saves a checkpoint ranked by them."""
    t0 = time.time()
    scores = {f'eval/{k}': v for k, v in evaluator(trainer, state).items()}
    writer.write_scalars(step_number, scores)
    logging.info('step %d  eval (%d samples, %.1f s): %s', step_number, evaluator.num_samples,
                 time.time() - t0, evaluator_lib.format_scores(
                     {k[len('eval/'):]: v for k, v in scores.items()}))
    timings['eval_s'] += time.time() - t0
    save(step_number, scores)
    return scores

  logging.info('Training %d steps (from step %d), global batch %d on %d device(s), '
               '%d process(es), up to %d steps per call.', num_steps, start, config.batch_size,
               jax.device_count(), jax.process_count(), steps_per_call)
  t_start, s_start = time.time(), start
  done, calls = start, 0
  timings = {'eval_s': 0.0}
  scores = {}
  try:
    with StopSignal() as stop:
      while done < num_steps:
        # A full call of `steps_per_call` steps, or single steps up to the next log,
        # checkpoint or sample step (two programs, whatever the cadences).
        k = call_length(done, num_steps, steps_per_call, cadences)
        if k < steps_per_call:
          k = 1
        if k == 1:
          images = sharding.global_batch(next(batches), mesh)
          state, metrics = train_step(state, images, train_key)
          buffer.add(done + 1, metrics)
        else:
          images = sharding.global_batches(np.stack([next(batches) for _ in range(k)]), mesh)
          state, metrics = train_steps(state, images, train_key)
          buffer.add(done + k, metrics, num_steps=k)
        done += k
        calls += 1
        if done % config.log_every_steps == 0 or done == num_steps:
          log_progress(buffer, writer, done, num_steps, t_start, s_start)
        if stop.should_stop(calls):
          save(done)
          logging.warning('Stopped by %s at step %d; checkpoint saved. Run the same command '
                          'to resume.', stop.received or 'a signal to another process', done)
          return state
        if evaluator and evaluator.enabled and (done % eval_every == 0 or done == num_steps):
          scores = evaluate(done)
        if done % config.checkpoint_every_steps == 0 or done == num_steps:
          save(done)
        if done % config.sample_every_steps == 0 or done == num_steps:
          write_samples(done)
    if scores:
      report_final_scores(evaluator, done, scores, ckpt.best_step(),
                          timings['eval_s'] / max(time.time() - t_start, 1e-9))
  finally:
    writer.close()
    ckpt.close()
  logging.info('Done: %d steps. Samples: %s  Logs (TensorBoard): %s  Checkpoints: %s',
               num_steps, workdir / 'samples', workdir / 'logs', workdir / 'checkpoints')
  return state


def report_final_scores(evaluator: evaluator_lib.Evaluator, step_number: int,
                        scores: dict[str, float], best_step: int | None,
                        eval_share: float) -> None:
  """Prints the last scores beside real data's own (what a perfect generator would score)."""
  if jax.process_index():
    return
  values = {k[len('eval/'):]: v for k, v in scores.items()}
  lines = [f'Scores at step {step_number} ({evaluator.num_samples} samples): '
           f'{evaluator_lib.format_scores(values)}']
  real = evaluator.real_scores()
  if real:
    lines.append(f'Real digits ({real.get("num_images", evaluator.num_samples):.0f} train '
                 f'digits against the test split): {evaluator_lib.format_scores(real)}')
  if best_step is not None:
    lines.append(f'Best checkpoint by {evaluator.settings.best_metric}: step {best_step}.')
  lines.append(f'Evaluation took {100 * eval_share:.1f}% of this session\'s wall time.')
  print('\n'.join(lines), flush=True)
