"""Test set-up: two faked CPU devices (data-parallel tests), quiet TensorFlow, fast compiles."""

import os
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))  # `configs` and `tests` are top-level folders.

from tests import subprocess_env  # pylint: disable=g-import-not-at-top,wrong-import-position

# Must happen before anything imports jax. Two faked devices, and XLA:CPU's faster-compiling
# code generator (tests/subprocess_env.py says why).
os.environ.setdefault('XLA_FLAGS', subprocess_env.xla_flags(2))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# One persistent compilation cache for the session's processes (the xdist workers inherit
# the controller's environment, and so do the tests' subprocesses): the tiny configs compile
# the same programs in many tests (grid, padding and population tests: 226 s -> 176 s on 2
# cores). Removed when the session ends (`pytest_sessionfinish`); JAX_COMPILATION_CACHE_DIR=
# (empty) turns it off.
_OWN_CACHE = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
if _OWN_CACHE:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
      os.environ.get('TMPDIR', '/tmp'), f'ebgan_jax_tests_xla_{os.getpid()}')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import contextlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import shutil  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, 'workerinput'):  # The controller, at the end.
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


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


def _assert_updates_close(got, want, initial, *, fraction=1e-3, outliers=1e-3, what=''):
  """Params `got` and `want`, both trained from `initial`, agree to `fraction` of the update.

  The tolerance is set by the update size: the largest |want - initial| of the tree (a few
  lr under Adam, lr * |grad| per step under SGD). Float32 round-off (~1e-7 relative) passes
  into SGD's updates linearly and into Adam's through m_hat / sqrt(v_hat), which is smooth
  where |grad| >> eps; but where a gradient is itself round-off-sized, Adam can turn the
  round-off into a step of either sign, up to ~lr. So at most `outliers` of the elements may
  differ by more than `fraction` of the largest update, and none by more than the largest
  update. A run with another member's hyper-parameters (lr, margin, lambda_PT, optimizer)
  differs in most elements by a good share of the update.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64))
                                      for x in jax.tree.leaves(tree)])
  got, want, initial = flat(got), flat(want), flat(initial)
  assert got.shape == want.shape, what
  scale = np.max(np.abs(want - initial))
  assert scale > 0, f'{what}: the params did not move'
  diff = np.abs(got - want)
  off = np.mean(diff > fraction * scale)
  assert off <= outliers, (f'{what}: {off:.2%} of the elements differ by more than {fraction} '
                           f'of the largest update {scale:.3g} (max {diff.max():.3g})')
  assert diff.max() <= scale, f'{what}: an element differs by {diff.max():.3g} > {scale:.3g}'


@pytest.fixture(scope='session')
def assert_updates_close():
  """`_assert_updates_close`: params against a reference, the tolerance from the update size."""
  return _assert_updates_close
