"""orbax checkpoints of the train-state pytree, with a fallback past damaged checkpoints.

orbax writes each step into a temporary folder and renames it when complete, so a write cut
short leaves nothing that looks like a checkpoint. A checkpoint damaged afterwards (a
truncated file, a disk error) fails to restore: it is then moved aside to
`corrupt-<step>` (kept for inspection, never deleted) with a warning, and the previous one is
restored instead.
"""

from __future__ import annotations

import logging as std_logging
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class _OrbaxInfoFilter(std_logging.Filter):
  """Drops INFO lines of orbax (one per file it opens or closes); keeps its warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def quiet_orbax_logs() -> None:
  """Keeps orbax's INFO chatter out of the run's log (call once the log handlers exist)."""
  for handler in std_logging.getLogger().handlers + std_logging.getLogger('absl').handlers:
    handler.addFilter(_OrbaxInfoFilter())


class Checkpointer:
  """Saves and restores one pytree per step under `directory`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self._max_to_keep = max_to_keep
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
    return ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    """Saves `state` as `step` (a no-op if that step is already saved) and waits for it."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, step: int, target: Any) -> Any:
    """Restores `step` with the shapes, dtypes and shardings of `target` (arrays or abstract)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, target: Any) -> tuple[Any, int | None]:
    """The newest checkpoint that restores, as (state, step); (target, None) if there is none.

    A checkpoint that fails to restore is moved aside to `corrupt-<step>` with a warning and
    the next older one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, target), step
      except Exception as e:  # pylint: disable=broad-except  # Any failure means unusable.
        logging.warning('Checkpoint %d in %s does not restore (%s: %s); moving it aside to '
                        'corrupt-%d and trying the previous one.', step, self.directory,
                        type(e).__name__, str(e)[:300], step)
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
    self._manager.close()
    self._manager = self._new_manager()  # Re-read the folder without the moved checkpoint.

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
