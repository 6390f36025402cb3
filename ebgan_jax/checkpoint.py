"""orbax checkpoints of a state pytree: portable across machines, careful about what is damage.

Saving (`Checkpointer.save`): one `ocp.CheckpointManager` step per save. orbax writes a step
into a temporary folder and commits it only when complete (a rename on local disks, a commit
file on GCS), so a save cut short (a SIGKILL, a preempted VM) leaves no checkpoint and the
previous one stays the newest. Beside the arrays, the step's custom metadata records every
leaf's path, shape, dtype and a checksum of its bits (`fingerprint`).

Restoring a step (`Checkpointer.restore`):
1. Fit. The recorded leaves are compared with the target's. A checkpoint written by another
   config or version of the code (another tree structure, shape or dtype; EMA on or off)
   raises `CheckpointMismatchError` naming the first differing leaf, and nothing is moved.
2. Placement. The arrays are read onto the target's shardings, or, for abstract targets
   without one, replicated over this process's devices: a checkpoint written on N devices
   of P processes restores on any device count (a pod's run sampled on a laptop's CPU).
3. Damage. A checkpoint whose own files cannot be read (missing, truncated or garbled files:
   tensorstore's NOT_FOUND, OUT_OF_RANGE, DATA_LOSS..., metadata that does not parse, or
   arrays whose checksum differs from the recorded one) raises `CheckpointCorruptError`;
   `restore_latest` then moves it aside to `corrupt-<step>` (kept, never deleted) and tries
   the previous one.
4. Anything else (a transient storage error, an out-of-memory) is retried a few times and
   then raised as it is: the checkpoint stays where it is.
"""

from __future__ import annotations

import json
import logging as std_logging
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ebgan_jax import paths, scores as scores_lib, sharding

# Key of this module's record in a step's custom metadata (orbax's _CHECKPOINT_METADATA).
METADATA_KEY = 'ebgan_jax'
CHECKPOINT_METADATA_FILE = '_CHECKPOINT_METADATA'
# Substrings of the errors tensorstore and orbax raise for files that are missing, cut short
# or garbled (tensorstore's status codes), as opposed to storage that is unreachable.
_CORRUPTION_MARKERS = ('NOT_FOUND', 'OUT_OF_RANGE', 'DATA_LOSS', 'Truncated', 'corrupt',
                       'Error decoding', 'Failed to decode', 'Unexpected end')
_RETRY_DELAYS_S = (2.0, 10.0)  # Between the attempts of a restore that failed otherwise.


class CheckpointMismatchError(ValueError):
  """A checkpoint that reads but does not fit the current config or code."""


class CheckpointCorruptError(IOError):
  """A checkpoint whose own files cannot be read (missing, truncated, garbled)."""


class _OrbaxInfoFilter(std_logging.Filter):
  """Drops INFO lines of orbax (one per file it opens or closes) and its warning that a save
  without scores cannot be ranked (our saves between evaluations); keeps its other warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if '/orbax/' not in record.pathname:
      return True
    return record.levelno >= std_logging.WARNING and 'did not provide metrics' not in str(
        record.msg)


def quiet_orbax_logs() -> None:
  """Keeps orbax's INFO chatter out of the run's log (call once the log handlers exist)."""
  for handler in std_logging.getLogger().handlers + std_logging.getLogger('absl').handlers:
    handler.addFilter(_OrbaxInfoFilter())


# -- leaves and fingerprints ----------------------------------------------------------------------
def _bits(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 (one word per element, whatever its dtype)."""
  x = jnp.ravel(x)
  size = jnp.dtype(x.dtype).itemsize
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  if size == 8:  # With jax_enable_x64: both halves.
    return jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
  raise TypeError(f'No checksum for dtype {x.dtype}.')


def _checksum(x: jax.Array) -> jax.Array:
  """A uint32 checksum of the bits of `x`: sum_i mix(bits_i) * (2i + 1) mod 2^32.

  Modular sums do not depend on the order of the additions, so the same array gives the
  same number on any device count or backend; a changed bit changes it (odd multipliers are
  invertible mod 2^32, and `mix` spreads high bits into low ones).
  """
  bits = _bits(x)
  mixed = bits ^ (bits >> 16)
  weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(mixed * weights, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: Sequence[jax.Array]) -> list[jax.Array]:
  return [_checksum(x) for x in leaves]


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{leaf path: (shape, dtype name)} of the arrays (or abstract arrays) of `tree`."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): (tuple(int(d) for d in leaf.shape),
                                       jnp.dtype(leaf.dtype).name) for path, leaf in flat}


def fingerprint(tree: Any) -> dict[str, list]:
  """{leaf path: [shape, dtype, checksum]} of a pytree of arrays (one jitted pass)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  sums = jax.device_get(_checksums([leaf for _, leaf in flat]))
  return {jax.tree_util.keystr(path): [list(leaf.shape), jnp.dtype(leaf.dtype).name, int(s)]
          for (path, leaf), s in zip(flat, sums)}


def first_difference(recorded: dict[str, tuple], target: dict[str, tuple]) -> str | None:
  """A sentence naming the first leaf where `recorded` and `target` specs differ, or None."""
  for path in list(target) + [p for p in recorded if p not in target]:
    got, want = recorded.get(path), target.get(path)
    if got is None:
      return (f'{path} (shape {list(want[0])}, {want[1]}) is in the current state but not in '
              'the checkpoint')
    if want is None:
      return (f'{path} (shape {list(got[0])}, {got[1]}) is in the checkpoint but not in the '
              'current state')
    if tuple(got[0]) != tuple(want[0]) or got[1] != want[1]:
      return (f'{path} is shape {list(got[0])}, {got[1]} in the checkpoint but shape '
              f'{list(want[0])}, {want[1]} in the current state')
  return None


def _error_chain(error: BaseException) -> list[BaseException]:
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def is_corruption(error: BaseException) -> bool:
  """Whether `error` says that a checkpoint's files are missing, cut short or garbled."""
  for e in _error_chain(error):
    if isinstance(e, (CheckpointCorruptError, json.JSONDecodeError, FileNotFoundError)):
      return True
    if any(marker in str(e) for marker in _CORRUPTION_MARKERS):
      return True
  return False


def _is_mismatch(error: BaseException) -> bool:
  """orbax's own errors for a target that does not fit (checkpoints without a record)."""
  return any(('tree structures do not match' in str(e) or 'is not compatible with the stored '
              'shape' in str(e)) for e in _error_chain(error))


def _abstract(target: Any, default_sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `target` with its shardings (`default_sharding` where it has none)."""
  def one(x):
    s = getattr(x, 'sharding', None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s or default_sharding)
  return jax.tree.map(one, target)


def _agree(flag: bool) -> bool:
  """True on every process if `flag` is True on any (restores are collective)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.array(flag))))


class Checkpointer:
  """Saves and restores one pytree per step under `directory` (local or remote)."""

  def __init__(self, directory: paths.PathLike, keep: int = 3,
               retry_delays: Sequence[float] = _RETRY_DELAYS_S, best_metric: str = '',
               lower_is_better: bool = True):
    """Args:
      directory: the checkpoints folder (e.g. WORKDIR/checkpoints or gs://bucket/run/...).
      keep: how many of the newest checkpoints to keep (older ones are deleted by orbax).
      retry_delays: seconds to wait before each retry of a restore that failed for a reason
        other than damage or mismatch.
      best_metric: when set (e.g. 'eval/classifier_fid'), the checkpoint with the best value
        among the scores passed to `save` is kept too, beside the `keep` newest (orbax's
        `BestN` preservation policy; the scores live in each step's folder, so the choice
        survives a restart). A NaN score counts as the worst.
      lower_is_better: the direction of `best_metric`.
    """
    if keep < 1:
      raise ValueError(f'Keep at least one checkpoint (config.keep_checkpoints={keep}).')
    self.directory = paths.as_path(directory)
    self._retry_delays = tuple(retry_delays)
    self.best_metric = best_metric
    policy = ocp.checkpoint_managers.LatestN(keep)
    best = {}
    if best_metric:
      worst = float('inf') if lower_is_better else float('-inf')

      def metric(scores: dict[str, float]) -> float:
        value = float((scores or {}).get(best_metric, float('nan')))
        return value if np.isfinite(value) else worst

      policy = ocp.checkpoint_managers.AnyPreservationPolicy([
          policy, ocp.checkpoint_managers.BestN(get_metric_fn=metric, reverse=lower_is_better,
                                                n=1, keep_checkpoints_without_metrics=False)])
      best = dict(best_fn=metric, best_mode='min' if lower_is_better else 'max')
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True, **best)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step whose saved scores are best by `best_metric` (None without any)."""
    return self._manager.best_step() if self.best_metric else None

  def save(self, step: int, state: Any, scores: dict[str, float] | None = None) -> None:
    """Saves `state` as `step` (a no-op if that step is already saved) and waits for it.

    `scores` (e.g. {'eval/classifier_fid': 3.2}) rank the checkpoint for `best_metric`.
    """
    if step in self._manager.all_steps():
      return
    record = {'format': 1, 'leaves': fingerprint(state)}
    self._manager.save(step, args=ocp.args.StandardSave(state),
                       metrics=dict(scores) if scores and self.best_metric else None,
                       custom_metadata={METADATA_KEY: record})
    self._manager.wait_until_finished()

  # -- restoring ----------------------------------------------------------------------------------
  def _record(self, step: int) -> dict[str, Any] | None:
    """This module's record of `step` (None for checkpoints written before it existed).

    Raises CheckpointCorruptError when the step's metadata file is missing or unparsable;
    any other error (e.g. storage that did not answer) is retried as `restore` retries, then
    raised as it is.
    """
    path = self.directory / str(step) / CHECKPOINT_METADATA_FILE
    for attempt in range(len(self._retry_delays) + 1):
      try:
        meta = json.loads(path.read_text())
        return (meta.get('custom_metadata') or {}).get(METADATA_KEY)
      except (FileNotFoundError, json.JSONDecodeError) as e:
        raise CheckpointCorruptError(f'{path} is missing or unreadable ({e}).') from e
      except Exception as e:  # pylint: disable=broad-except  # Retried, then raised.
        if attempt == len(self._retry_delays):
          raise
        self._wait_to_retry(step, attempt, e)
    raise AssertionError('unreachable')

  def _wait_to_retry(self, step: int, attempt: int, error: Exception) -> None:
    delay = self._retry_delays[attempt]
    logging.warning('Restoring checkpoint %d of %s failed (%s: %s); retrying in %.0f s.',
                    step, self.directory, type(error).__name__, str(error)[:200], delay)
    time.sleep(delay)

  def restore(self, step: int, target: Any) -> Any:
    """Restores `step` with the structure, shapes and dtypes of `target`.

    `target` holds arrays or `jax.ShapeDtypeStruct`s; the restored arrays take their
    shardings, or are replicated over this process's devices where they have none.

    Raises:
      CheckpointMismatchError: the checkpoint does not fit `target` (nothing is moved).
      CheckpointCorruptError: the checkpoint's files are damaged.
      Other errors after the retries (e.g. storage unreachable, out of memory).
    """
    record = self._record(step)
    abstract = _abstract(target, sharding.replicated(sharding.make_mesh()))
    if record is not None:
      recorded = {p: (tuple(v[0]), v[1]) for p, v in record['leaves'].items()}
      difference = first_difference(recorded, _leaf_specs(abstract))
      if difference:
        raise CheckpointMismatchError(
            f'Checkpoint {step} in {self.directory} does not fit the state of this run: '
            f'{difference}. It was written by another config or version of the code '
            '(e.g. other model widths, optimizer or ema_decay); nothing was moved. Resume '
            'with the config it was written with (config.json beside checkpoints/), or train '
            'in a new --workdir.')
    attempts = len(self._retry_delays) + 1
    for attempt in range(attempts):
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        if record is not None:
          self._verify(step, state, record)
        return state
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Classified below.
        if is_corruption(e):
          raise CheckpointCorruptError(
              f'Checkpoint {step} in {self.directory} is damaged: {type(e).__name__}: '
              f'{str(e)[:300]}') from e
        if record is None and _is_mismatch(e):
          raise CheckpointMismatchError(
              f'Checkpoint {step} in {self.directory} does not fit the state of this run '
              f'({str(e)[:300]}); nothing was moved. Resume with the config it was written '
              'with, or train in a new --workdir.') from e
        if attempt + 1 == attempts:
          raise
        self._wait_to_retry(step, attempt, e)
    raise AssertionError('unreachable')

  def _verify(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Raises CheckpointCorruptError if the restored bits differ from the recorded ones."""
    got = fingerprint(state)
    for path, (_, _, checksum) in record['leaves'].items():
      if got[path][2] != checksum:
        raise CheckpointCorruptError(
            f'Checkpoint {step} in {self.directory}: the bits of {path} read back differ '
            'from those saved (checksum mismatch); its files are garbled.')

  def restore_latest(self, target: Any) -> tuple[Any, int | None]:
    """The newest checkpoint that restores, as (state, step); (target, None) if none exists.

    A damaged checkpoint is moved aside to `corrupt-<step>` with a warning and the next
    older one is tried; any other failure is raised with every checkpoint left in place.
    """
    for step in reversed(self.all_steps()):
      try:
        corrupt = None
        state = self.restore(step, target)
      except CheckpointCorruptError as e:
        corrupt = e
      if not _agree(corrupt is not None):
        return state, step
      logging.warning('Checkpoint %d is damaged (%s); moving it aside to corrupt-%d and '
                      'trying the previous one.', step, corrupt or 'on another process', step)
      self._move_aside(step)
    return target, None

  def _move_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      source = self.directory / str(step)
      dest = self.directory / f'corrupt-{step}'
      suffix = 0
      while dest.exists():
        suffix += 1
        dest = self.directory / f'corrupt-{step}.{suffix}'
      source.rename(dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'ebgan_jax_move_aside_{step}')
    self._manager.reload()  # Re-read the folder without the moved checkpoint.

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()



def for_run(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> Checkpointer:
  """The Checkpointer of the run in `workdir`: `config.keep_checkpoints` newest, and the best
  by `config.eval.best_metric` when the run is scored while it trains."""
  best = config.eval.get('best_metric', '') if 'eval' in config else ''
  if not config.get('eval_every_steps', 0):
    best = ''
  return Checkpointer(paths.as_path(workdir) / 'checkpoints', config.get('keep_checkpoints', 3),
                      best_metric=best, lower_is_better=scores_lib.lower_is_better(best))
