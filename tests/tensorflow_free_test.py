"""The MNIST experiments run on a host without TensorFlow or tfds (as the GPU images we use).

Each command runs in a subprocess whose `sitecustomize` makes `import tensorflow` and
`import tensorflow_datasets` raise: the tiny demo (`ebgan_jax.main`), its scores
(`ebgan_jax.evaluate`), a smoke grid (`experiments.grid_search`) and its figures
(`experiments.figures`).
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from ebgan_jax import classifier
from tests import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[1]
BLOCKER = '''
import importlib.machinery
import sys

HIDDEN = ('tensorflow', 'tensorflow_datasets')


class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
  """The standard finder, for which TensorFlow and tfds are not installed."""

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split('.')[0] in HIDDEN:
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [PathFinderWithoutTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
'''
TINY_DEMO = ['--config.model.size_g=32', '--config.model.size_d=32', '--config.model.n_layer_g=2',
             '--config.batch_size=8', '--config.total_steps=4', '--config.log_every_steps=2',
             '--config.checkpoint_every_steps=2', '--config.sample_every_steps=4',
             '--config.num_sample_images=4', '--config.eval_every_steps=0']


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  site = tmp_path_factory.mktemp('no_tensorflow')
  (site / 'sitecustomize.py').write_text(BLOCKER)
  return subprocess_env.subprocess_env(devices=1, PYTHONPATH=f'{site}{os.pathsep}{REPO}')


def run(env, *args):
  result = subprocess.run([sys.executable, '-m', *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_the_blocker_blocks(env):
  result = subprocess.run([sys.executable, '-c', 'import tensorflow'], env=env,
                          capture_output=True, text=True, check=False)
  assert result.returncode != 0 and "No module named 'tensorflow'" in result.stderr


@pytest.mark.slow
def test_demo_and_its_scores_without_tensorflow(env, tmp_path):
  workdir = tmp_path / 'demo'
  run(env, 'ebgan_jax.main', '--config=configs/mnist_fc.py:ebgan_pt', f'--workdir={workdir}',
      *TINY_DEMO)
  assert (workdir / 'checkpoints' / '4').exists()
  assert list((workdir / 'logs').glob('events.out.tfevents.*'))
  assert (workdir / 'samples' / 'step_0000004.png').exists()
  clf_dir = tmp_path / 'classifier'  # An untrained one: the scores' plumbing is under test.
  classifier.save_classifier(clf_dir, classifier.init_params(jax.random.key(0)),
                             {'test_accuracy': 0.1})
  out = run(env, 'ebgan_jax.evaluate', f'--workdir={workdir}', '--checkpoint=latest',
            '--num_samples=20',
            f'--classifier_dir={clf_dir}').stdout
  scores = json.loads(out[:out.rindex('}') + 1])
  assert scores['step'] == 4


@pytest.mark.slow
def test_smoke_grid_and_figures_without_tensorflow(env, tmp_path):
  grid_dir = tmp_path / 'grid'
  run(env, 'experiments.grid_search', '--config=configs/mnist_grid.py:smoke',
      f'--workdir={grid_dir}', '--max_populations=1')
  run(env, 'experiments.grid_search', f'--workdir={grid_dir}', '--merge')
  rows = (grid_dir / 'results.jsonl').read_text().splitlines()
  assert rows and all(json.loads(r)['num_samples'] == 64 for r in rows)
  run(env, 'experiments.figures', f'--workdir={grid_dir}')
  assert (grid_dir / 'figures' / 'fig2.png').exists()
