"""Device mesh and shardings for data-parallel training with `jax.jit`.

One mesh axis, 'data', spans every device of every process. The batch is split along it,
parameters and optimizer states are replicated; XLA inserts the gradient all-reduce and the
cross-device reductions of BatchNorm, so batch statistics are those of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over the first `num_devices` devices (default: all of them)."""
  devices = jax.devices()
  num_devices = num_devices or len(devices)
  if num_devices > len(devices):
    raise ValueError(f'Asked for {num_devices} devices, only {len(devices)} are visible.')
  return jax.sharding.Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def stacked_batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Batches stacked along a leading step axis [K, B, ...]: B split over 'data'."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """Stitches each process's host-local batch into one global array sharded over 'data'."""
  sharding = batch_sharding(mesh)
  if local_batch.shape[0] % (mesh.devices.size // jax.process_count()):
    raise ValueError(f'The local batch of {local_batch.shape[0]} does not split over the '
                     f'{mesh.devices.size // jax.process_count()} local devices.')
  return jax.make_array_from_process_local_data(sharding, local_batch)


def global_batches(local_batches: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """`global_batch` for host-local batches stacked along a leading step axis [K, b, ...]."""
  if local_batches.shape[1] % (mesh.devices.size // jax.process_count()):
    raise ValueError(f'The local batch of {local_batches.shape[1]} does not split over the '
                     f'{mesh.devices.size // jax.process_count()} local devices.')
  return jax.make_array_from_process_local_data(stacked_batch_sharding(mesh), local_batches)
