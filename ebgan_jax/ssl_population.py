"""Many semi-supervised runs in one program: Table 2's seeds and label counts (Sec. 4.2).

Table 2 averages 15 seeds for each of 100, 200 and 1000 labels. The runs of one arm (Ladder,
EBGAN-LN, or the control) share every setting but the seed, the labelled-subset seed and the
label count, so they train together: each member keeps its own state, labelled subset, batch
order, corruption noise and RNG stream (all from its own config, as its run alone), and one
jitted program advances every member by `steps_per_call` steps (one `lax.scan`). The train
split lives on the device once; each call gets the members' batch indices, drawn on the host
exactly as `ssl_train.SSLData` draws them for a run alone, and gathers the images there.

How a program advances its members is the `strategy` (`ebgan_jax.population`): 'vmap' on an
accelerator (batched matrix products over the members), 'unroll' on a CPU (each member's own
step written out in turn; XLA:CPU's batched products are slow). All members are at the same
step, so EBGAN-LN's phase (G on before `generator_off_step`, off after) is one decision for
the population: calls end at the switch-off and each phase has its own program, where a
`lax.cond` on each member's step would, under `vmap`, run both branches.

Each member is a run of its own on disk, laid out as a run alone (`workdir`'s config.json,
checkpoints/, logs/ with `eval/test_error` at every checkpoint, samples/ for EBGAN-LN,
results.json at the end): it resumes from its checkpoints in a population or alone, and the
Table 2 driver reads it the same way.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ebgan_jax import checkpoint, config_checks, data, metric_writer, paths, population, sample
from ebgan_jax import semi_supervised
from ebgan_jax import ssl_train, train as train_lib
from ebgan_jax import workdir as workdir_lib

# Config fields the members of one population may differ in (all others must agree).
MEMBER_FIELDS = ('seed', 'ssl.labelled_seed', 'ssl.num_labelled')


@dataclasses.dataclass
class Member:
  """One run of a population: its config, folder, data, keys, checkpoints and logs."""
  config: ml_collections.ConfigDict
  workdir: paths.epath.Path
  data: ssl_train.SSLData
  train_key: jax.Array
  sample_key: jax.Array
  ckpt: checkpoint.Checkpointer
  writer: metric_writer.MetricWriter
  buffer: train_lib.MetricsBuffer
  error: str | None = None  # Why the member stopped early (non-finite losses).


def resume_step(workdir: paths.PathLike) -> int:
  """The step a run in `workdir` resumes from: its newest checkpoint's, 0 without one."""
  directory = paths.as_path(workdir) / 'checkpoints'
  if not directory.exists():
    return 0
  ckpt = checkpoint.Checkpointer(directory)
  try:
    return ckpt.latest_step() or 0
  finally:
    ckpt.close()


def _signature(config: ml_collections.ConfigDict) -> str:
  return population.shared_signature(config, fields=MEMBER_FIELDS)


class Program:
  """The jitted calls that advance a population's carry by K steps, one per phase.

  The carry is the strategy's form of the members' states: one stacked state ([P] leaves)
  under 'vmap', a tuple of per-member states under 'unroll'. A call takes the members' batch
  indices into the device-resident train split, labelled [K, P, B_l] and unlabelled
  [K, P, B], and returns the new carry and the metrics, each [K, P].
  """

  def __init__(self, trainer: semi_supervised.Trainer, train_keys: jax.Array,
               images: jax.Array, labels: jax.Array, strategy: str):
    self.trainer = trainer
    self.strategy = population.resolve_strategy(strategy)
    if self.strategy not in ('vmap', 'unroll'):
      raise ValueError(f"A semi-supervised population runs 'vmap' or 'unroll' (or 'auto'), "
                       f'not {self.strategy!r}.')
    self.size = len(train_keys)
    self._args = (images, labels, train_keys)  # Arguments, not constants folded into a program.
    self._calls = {on: jax.jit(self._steps(on), donate_argnums=0) for on in (False, True)}

  def _steps(self, generator_on: bool) -> Callable:
    trainer, strategy = self.trainer, self.strategy

    def steps(carry, lab_idx, unl_idx, images, labels, train_keys):
      def member_step(state, lab, unl, key):
        return trainer.train_step(state, (images[lab], labels[lab]), images[unl], key,
                                  generator_on=generator_on)

      def one(carry, idx):
        if strategy == 'vmap':
          return jax.vmap(member_step)(carry, *idx, train_keys)
        outs = [member_step(member, idx[0][i], idx[1][i], train_keys[i])
                for i, member in enumerate(carry)]
        return (tuple(state for state, _ in outs),
                jax.tree.map(lambda *m: jnp.stack(m), *(metrics for _, metrics in outs)))

      return jax.lax.scan(one, carry, (lab_idx, unl_idx))

    return steps

  def __call__(self, carry, lab_idx: np.ndarray, unl_idx: np.ndarray, generator_on: bool):
    """K steps of every member from batch indices [K, P, B_l] and [K, P, B]."""
    return self._calls[bool(generator_on)](carry, lab_idx.astype(np.int32),
                                           unl_idx.astype(np.int32), *self._args)

  def to_carry(self, states: Sequence[semi_supervised.SSLState]):
    if self.strategy == 'vmap':
      return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    return tuple(states)

  def member(self, carry, index: int) -> semi_supervised.SSLState:
    if self.strategy == 'vmap':
      return jax.tree.map(lambda leaf: leaf[index], carry)
    return carry[index]

  def stacked_d(self, carry) -> tuple[Any, Any]:
    """(D's params, D's batch statistics) of every member, stacked [P, ...]."""
    if self.strategy == 'vmap':
      return carry.d.params, carry.d.batch_stats
    stack = lambda *leaves: jnp.stack(leaves)
    return (jax.tree.map(stack, *(m.d.params for m in carry)),
            jax.tree.map(stack, *(m.d.batch_stats for m in carry)))


def test_errors(trainer: semi_supervised.Trainer, d_params: Any, d_batch_stats: Any,
                images: np.ndarray, labels: np.ndarray, batch_size: int) -> np.ndarray:
  """Every member's clean-path test error [P] (fractions), from D's stacked [P] variables."""
  predict = jax.jit(jax.vmap(trainer.predict, in_axes=(0, 0, None)))
  predicted = semi_supervised.predict_in_batches(
      lambda chunk: predict(d_params, d_batch_stats, chunk), images, batch_size)  # [P, N]
  return np.mean(predicted != np.asarray(labels)[None], axis=1)


def train_population(configs: Sequence[ml_collections.ConfigDict],
                     workdirs: Sequence[paths.PathLike], *, strategy: str = 'auto',
                     splits: ssl_train.Splits | None = None,
                     deadline: float | None = None) -> list[dict[str, Any]]:
  """Trains the runs `configs` (one per folder of `workdirs`) together, resuming each.

  Args:
    configs: the members' configs, equal but for `MEMBER_FIELDS`.
    workdirs: each member's run folder (its checkpoints at one step, or none).
    strategy: 'auto', 'vmap' or 'unroll' (module docstring).
    splits: the data (`ssl_train.load_splits` of the configs' dataset), to share a loaded copy.
    deadline: a `time.time()` after which to save every member and return, as on SIGTERM (a
      fixed time budget: the same call later resumes).
  Returns:
    Per member, the results written to its results.json; {} for a member not finished (the
    population was stopped, or the member's losses became non-finite: its 'error' key says
    so, and no checkpoint after its last good one is written).
  Raises:
    ValueError: if the configs differ in more than `MEMBER_FIELDS` or the members'
      checkpoints are at different steps.
  """
  configs, workdirs = list(configs), [paths.as_path(w) for w in workdirs]
  if len(configs) != len(workdirs) or not configs:
    raise ValueError(f'{len(configs)} configs for {len(workdirs)} workdirs.')
  if len({_signature(c) for c in configs}) != 1:
    raise ValueError(f'A population needs configs that differ only in {MEMBER_FIELDS}; '
                     'train the others in a population of their own.')
  for c in configs:  # Before any work; the members share one device (no batch split).
    config_checks.validate(c, driver='semi_supervised', known_datasets=data.known_datasets())
  config = configs[0]
  num_steps = config.total_steps
  steps_per_call = config.get('steps_per_call', 1)
  trainer = semi_supervised.Trainer(config, num_steps)
  splits = splits or ssl_train.load_splits(config)
  device = jax.devices()[0]  # One device: the members, not the batch, fill it.
  create_state = jax.jit(trainer.create_state,
                         out_shardings=jax.sharding.SingleDeviceSharding(device))

  members, states, starts = [], [], []
  for c, w in zip(configs, workdirs):
    workdir_lib.record_config(w, c, write=jax.process_index() == 0)
    init_key, train_key, sample_key = jax.random.split(jax.random.key(c.seed), 3)
    ckpt = checkpoint.Checkpointer(w / 'checkpoints', c.keep_checkpoints)
    state, step = ckpt.restore_latest(create_state(init_key))  # As ssl_train's run alone.
    members.append(Member(c, w, ssl_train.SSLData(c, splits), train_key, sample_key, ckpt,
                          metric_writer.MetricWriter(w / 'logs'), train_lib.MetricsBuffer()))
    states.append(state)
    starts.append(step or 0)
  if len(set(starts)) != 1:
    for m in members:
      m.ckpt.close()
      m.writer.close()
    raise ValueError('The members resume from different steps ('
                     + ', '.join(f'{w}: {s}' for w, s in zip(workdirs, starts))
                     + '); group them by `resume_step` into populations of one step each.')
  start = starts[0]

  images = jax.device_put(splits[0], device)
  labels = jax.device_put(splits[1], device)
  program = Program(trainer, jnp.stack([m.train_key for m in members]), images, labels,
                    strategy)
  carry = program.to_carry(states)
  del states
  cadences = (config.log_every_steps, config.checkpoint_every_steps, config.sample_every_steps)
  if trainer.is_ebgan and 0 < config.generator_off_step < num_steps:
    cadences += (config.generator_off_step,)  # A call never straddles the switch-off.
  generate = jax.jit(trainer.generate) if trainer.is_ebgan else None
  sample_z = [trainer.sample_latents(m.sample_key, config.num_sample_images) for m in members]
  test_images, test_labels = splits[2], splits[3]

  def alive() -> list[int]:
    return [i for i, m in enumerate(members) if m.error is None]

  def flush(i: int, step_number: int) -> None:
    """Member i's buffered metrics to its logs; marks it failed on non-finite values."""
    try:
      means = members[i].buffer.flush()
    except train_lib.NonFiniteLossError as e:
      members[i].error = str(e)
      logging.error('%s stopped: %s', members[i].workdir, e)
      return
    if means is not None:
      members[i].writer.write_scalars(step_number, {f'train/{k}': v for k, v in means.items()})

  def save(step_number: int) -> None:
    for i in alive():
      flush(i, step_number)  # Never save a state whose losses were not finite.
    errors = test_errors(trainer, *program.stacked_d(carry), test_images, test_labels,
                         config.ssl.eval_batch_size)
    for i in alive():
      state = program.member(carry, i)
      try:  # Nor a state that is itself non-finite (its losses may have been finite).
        train_lib.assert_state_finite(state, step_number)
      except train_lib.NonFiniteStateError as e:
        members[i].error = str(e)
        logging.error('%s stopped: %s', members[i].workdir, e)
        continue
      members[i].ckpt.save(step_number, state)
      members[i].writer.write_scalars(step_number, {'eval/test_error': float(errors[i])})

  def write_samples(step_number: int) -> None:
    if generate is None or jax.process_index() != 0:
      return
    for i in alive():
      g = program.member(carry, i).g
      grid = sample.image_grid(sample.to_uint8(generate(g.params, g.batch_stats, sample_z[i])))
      metric_writer.write_png(members[i].workdir / 'samples' / f'step_{step_number:07d}.png',
                              grid)
      members[i].writer.write_image(step_number, 'samples', grid)

  logging.info('%s: a population of %d runs (%s), training %d steps from step %d, up to %d '
               'steps per call.', config.variant, len(members), program.strategy, num_steps,
               start, steps_per_call)
  t_start, done, calls, stopped = time.time(), start, 0, False
  try:
    with train_lib.StopSignal() as stop:
      while done < num_steps:
        k = train_lib.call_length(done, num_steps, steps_per_call, cadences)
        k = k if k == steps_per_call else 1
        lab_idx, unl_idx = zip(*(m.data.train_indices(done, k) for m in members))
        generator_on = trainer.is_ebgan and done < config.generator_off_step
        carry, metrics = program(carry, np.stack(lab_idx, 1), np.stack(unl_idx, 1),
                                 generator_on)  # indices [K, P, B]
        done += k
        calls += 1
        for i in alive():
          members[i].buffer.add(done, jax.tree.map(lambda m, i=i: m[:, i], metrics),
                                num_steps=k)
        if done % config.log_every_steps == 0 or done == num_steps:
          for i in alive():
            flush(i, done)
          rate = (done - start) / max(time.time() - t_start, 1e-9)
          logging.info('step %d/%d  %.2f steps/s (%d members: %.1f member-steps/s)', done,
                       num_steps, rate, len(members), rate * len(members))
        if stop.should_stop(calls) or (deadline is not None and time.time() > deadline):
          save(done)
          logging.warning('Stopped (%s) at step %d; checkpoints saved. Run the same command to '
                          'resume.', stop.received or 'time budget', done)
          stopped = True
          break
        if done % config.checkpoint_every_steps == 0 or done == num_steps:
          save(done)
        if done % config.sample_every_steps == 0 or done == num_steps:
          write_samples(done)
    results = [{} for _ in members]
    if not stopped:
      train_seconds = time.time() - t_start
      errors = test_errors(trainer, *program.stacked_d(carry), test_images, test_labels,
                           config.ssl.eval_batch_size)
      for i in alive():
        results[i] = ssl_train.results_record(
            members[i].config, float(errors[i]), len(test_labels), train_seconds,
            population_size=len(members), population_strategy=program.strategy)
        ssl_train.write_results(members[i].workdir, results[i])
    for m, r in zip(members, results):
      if m.error is not None:
        r['error'] = m.error
  finally:
    for m in members:
      m.writer.close()
      m.ckpt.close()
  return results
