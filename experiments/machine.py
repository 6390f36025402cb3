"""What the benchmarks measure about the machine itself, beside each run's rates.

The matmul rate (the compute peak a step is measured against), a streaming pass's memory
bandwidth (the small fully-connected steps are memory-bound), the process's peak memory and
a one-line description of the devices and host.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import jax
import jax.numpy as jnp


def matmul_gflops(n: int, seconds: float = 3.0, dtype=jnp.float32,
                  precision: str = 'highest') -> float:
  """Measured GFLOP/s of an n x n x n matmul (2 n^3 FLOPs), best of repeated runs."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
  f(a, b).block_until_ready()
  best, deadline = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
  return best


def peak_memory_mib() -> float:
  """Peak device memory on an accelerator, else the process's peak resident memory."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats and jax.default_backend() != 'cpu':
    return stats['peak_bytes_in_use'] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_gbps(mib: int = 256, seconds: float = 2.0) -> float:
  """Measured GB/s of a streaming elementwise pass (read + write of `mib` MiB of fp32).

  The optimizer updates and activations of the small fully-connected steps are bound by
  memory, not by the matmul rate: on a shared host the two move independently, so both are
  recorded beside each run.
  """
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  f = jax.jit(lambda a: a * 1.0001 + 1.0)
  f(x).block_until_ready()
  best, deadline = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    t = time.perf_counter()
    f(x).block_until_ready()
    best = max(best, 2 * x.nbytes / (time.perf_counter() - t) / 1e9)
  return best


def machine_description() -> str:
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return (f'{device.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); '
          f'host {cpu}, {os.cpu_count()} cores; jax {jax.__version__}')
