"""Test set-up: two faked CPU devices (data-parallel tests), quiet TensorFlow, fast compiles."""

import os

# Must happen before anything imports jax.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # `configs` is a top-level folder, not installed.


@pytest.fixture(scope='session')
def tfds_data_dir(tmp_path_factory) -> str:
  """One prepared-data folder shared by the session's tests (the IDX digits prepare once)."""
  return str(tmp_path_factory.mktemp('tfds'))
