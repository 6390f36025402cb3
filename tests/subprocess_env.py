"""The XLA flags of the test session, and the environment of the tests' subprocesses.

The tests compile many small programs and run each for a few steps, so compile time is most of
the suite. Beyond `jax_disable_most_optimizations` (conftest.py), XLA:CPU's older elemental
code generator (`--xla_cpu_use_fusion_emitters=false`) compiles an unoptimized program in
about half the time of the default fusion emitters (the Ladder step of
semi_supervised_test.py: 10.7 s -> 5.8 s; the suite on 2 cores: 13 min 11 s -> 11 min 22 s).
It changes how the kernels are generated, not the HLO the tests inspect (copies, dot
precisions, FLOP counts), and the programs compute the same functions. Users' runs keep
XLA's defaults.
"""

from __future__ import annotations

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST_CPU_CODEGEN = '--xla_cpu_use_fusion_emitters=false'


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a test process with `devices` faked CPU devices."""
  return f'--xla_force_host_platform_device_count={devices} {FAST_CPU_CODEGEN}'


def subprocess_env(devices: int = 1, **extra: str) -> dict[str, str]:
  """os.environ for a subprocess of a test: the checkout importable, `devices` CPU devices (and
  no GPU), the test session's fast compiles, quiet TensorFlow; `extra` on top."""
  return {**os.environ, 'PYTHONPATH': str(REPO), 'XLA_FLAGS': xla_flags(devices),
          'JAX_DISABLE_MOST_OPTIMIZATIONS': 'true', 'TF_CPP_MIN_LOG_LEVEL': '2',
          'CUDA_VISIBLE_DEVICES': '', **extra}
