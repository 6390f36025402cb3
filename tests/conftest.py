"""Test set-up: two faked CPU devices (data-parallel tests), quiet TensorFlow, fast compiles."""

import os

# Must happen before anything imports jax.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import pathlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # `configs` is a top-level folder, not installed.


@pytest.fixture(scope='session', autouse=True)
def classifier_cache(tmp_path_factory):
  """The offline classifiers the tests train go to a cache of their own (inherited by the
  tests' subprocesses), never to ~/.cache/ebgan_jax."""
  path = tmp_path_factory.mktemp('classifier_cache')
  os.environ['EBGAN_JAX_CACHE'] = str(path)
  return path


@pytest.fixture(scope='session')
def tfds_data_dir(tmp_path_factory) -> str:
  """One tfds data folder shared by the session's tests (mock data, prepared splits)."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def random_inception(tmp_path_factory):
  """(variables, path of their PyTorch-named .npz): one random FID Inception-v3 (21.8M
  parameters) for the session's tests, built and written once."""
  from ebgan_jax import inception  # pylint: disable=g-import-not-at-top
  variables = inception.init_variables(0)
  path = tmp_path_factory.mktemp('inception') / 'inception_random.npz'
  inception.save_variables(variables, path)
  return variables, path


@contextlib.contextmanager
def _most_optimizations_disabled():
  """Tiny models, a few steps: compile time dominates, so skip most of XLA's passes."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture(scope='module')
def fast_compiles_module():
  """For a whole test module: `pytestmark = pytest.mark.usefixtures('fast_compiles_module')`."""
  with _most_optimizations_disabled():
    yield


@pytest.fixture
def fast_compiles():
  """For one test."""
  with _most_optimizations_disabled():
    yield
