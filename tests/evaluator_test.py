"""Scores while training: eval/* logs, the best checkpoint kept, reproducible, runs compared.

A tiny fully-connected EBGAN-PT on the embedded digits, scored every 2 steps with an
untrained (random) classifier saved into the shared cache beforehand: the plumbing is under
test here; the scores' arithmetic is in scores_test.py and evaluate_test.py.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from configs import mnist_fc
from ebgan_jax import checkpoint, classifier, compare, evaluate, evaluator, sample, train

pytestmark = pytest.mark.usefixtures('fast_compiles_module')
SCORES = ('i_prime', 'inception_score', 'classifier_fid', 'kid', 'precision', 'recall',
          'modes_covered')


def tiny_config(cache: pathlib.Path, total_steps: int = 6, pt_weight: float = 0.1):
  config = mnist_fc.get_config('ebgan_pt')
  config.model.size_g = config.model.size_d = 32
  config.model.n_layer_g = 2
  config.loss.pt_weight = pt_weight
  config.batch_size, config.total_steps, config.steps_per_call = 8, total_steps, 2
  config.log_every_steps, config.checkpoint_every_steps = 2, 6
  config.sample_every_steps = 6
  config.eval_every_steps, config.eval.num_samples = 2, 40
  config.keep_checkpoints = 1
  config.eval.classifier_cache_dir = str(cache)
  return config


def seed_classifier(config) -> pathlib.Path:
  """An untrained classifier where the run will look for its cached one."""
  directory = evaluate.classifier_cache_dir(config)
  if not (directory / classifier.META_FILE).exists():
    classifier.save_classifier(directory, classifier.init_params(jax.random.key(1)),
                               {'test_accuracy': 0.1})
  return pathlib.Path(directory)


def eval_rows(workdir: pathlib.Path) -> dict[int, dict]:
  rows = [json.loads(line) for line in (workdir / 'logs' / 'metrics.jsonl').read_text()
          .splitlines()]
  return {r['step']: r for r in rows if 'eval/classifier_fid' in r}


@pytest.fixture(scope='module')
def scored_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('scored')
  config = tiny_config(root / 'cache')
  seed_classifier(config)
  train.train_and_evaluate(config, root / 'run')
  return root, config


def test_scores_are_logged_at_every_eval_step(scored_run, capsys):
  root, _ = scored_run
  rows = eval_rows(root / 'run')
  assert sorted(rows) == [2, 4, 6]
  for row in rows.values():
    assert {f'eval/{k}' for k in SCORES} <= set(row)
    assert 0.0 <= row['eval/precision'] <= 1.0 and 0.0 <= row['eval/recall'] <= 1.0


def test_the_best_checkpoint_is_kept_beside_the_latest_and_survives_a_resume(scored_run):
  root, config = scored_run
  rows = eval_rows(root / 'run')
  best = min(rows, key=lambda s: rows[s]['eval/classifier_fid'])
  ckpt = checkpoint.for_run(config, root / 'run')
  assert ckpt.best_step() == best
  assert ckpt.all_steps() == sorted({best, 6})  # keep_checkpoints = 1, plus the best
  ckpt.close()
  # Resuming to step 10 keeps ranking by the scores saved in the earlier steps.
  longer = tiny_config(root / 'cache', total_steps=10)
  train.train_and_evaluate(longer, root / 'run')
  rows = eval_rows(root / 'run')
  assert sorted(rows) == [2, 4, 6, 8, 10]
  best = min(rows, key=lambda s: rows[s]['eval/classifier_fid'])
  ckpt = checkpoint.for_run(longer, root / 'run')
  assert ckpt.best_step() == best
  assert ckpt.all_steps() == sorted({best, 10})
  ckpt.close()
  _, _, step = sample.load_generator(root / 'run', 'best')
  assert step == best


def test_scores_are_reproducible_from_the_command_line(scored_run):
  root, _ = scored_run
  rows = eval_rows(root / 'run')
  step = max(rows)
  result = evaluate.evaluate_workdir(root / 'run', checkpoint=str(step))
  for key in SCORES:
    assert result[key] == pytest.approx(rows[step][f'eval/{key}'], rel=1e-5, abs=1e-6), key


def test_asking_for_a_missing_checkpoint_names_what_exists(scored_run, tmp_path):
  root, _ = scored_run
  with pytest.raises(ValueError, match='no checkpoint of step 3; it keeps'):
    sample.load_generator(root / 'run', '3')
  with pytest.raises(ValueError, match='latest, best or a step'):
    sample.load_generator(root / 'run', 'newest')
  config = tiny_config(root / 'cache', total_steps=2)
  config.eval_every_steps = 0  # Not scored: no best checkpoint.
  train.train_and_evaluate(config, tmp_path / 'unscored')
  with pytest.raises(ValueError, match='holds no best checkpoint'):
    sample.load_generator(tmp_path / 'unscored', 'best')


def test_two_runs_side_by_side(scored_run, tmp_path):
  root, _ = scored_run
  other = tiny_config(root / 'cache', total_steps=4, pt_weight=0.0)
  train.train_and_evaluate(other, tmp_path / 'ebgan')
  rows, grids = compare.compare_runs([root / 'run', tmp_path / 'ebgan'])
  table = compare.markdown_table(rows)
  lines = table.splitlines()
  assert lines[0].startswith('| run | checkpoint | step | I\' | IS | classifier FID | KID |')
  runs = [line.split('|')[1].strip() for line in lines[2:]]
  assert runs.count('run') >= 1 and runs.count('ebgan') >= 1 and runs[-1] == 'real digits'
  assert [title.split(' ')[0] for title, _ in grids] == ['run', 'ebgan']
  out = tmp_path / 'comparison.png'
  compare.write_sample_grids(out, grids)
  width, height = Image.open(out).size
  assert width == 800 and height == 440  # Two 4 x 4.4 inch panels at 100 dpi.


def test_evaluation_key_is_fixed_by_the_seed():
  config = mnist_fc.get_config('ebgan')
  a = jax.random.key_data(evaluator.eval_key(config))
  config.seed = 1
  b = jax.random.key_data(evaluator.eval_key(config))
  assert not np.array_equal(a, b)
  config.seed = 0
  np.testing.assert_array_equal(a, jax.random.key_data(evaluator.eval_key(config)))


def test_the_classifier_cache_is_per_dataset_and_settings(tmp_path):
  config = tiny_config(tmp_path)
  base = evaluate.classifier_cache_dir(config)
  assert str(base).startswith(str(tmp_path)) and 'mnist_10k' in base.name
  config.eval.classifier_epochs = 1
  assert evaluate.classifier_cache_dir(config) != base
  config.eval.classifier_epochs = 5
  config.data_dir = '/usr/share/datasets/fashion-mnist'
  assert 'fashion-mnist' in evaluate.classifier_cache_dir(config).name
