"""The grid search: Table 1 sweeps, the smoke grid end to end, kills and restarts, shards,
bucketed populations (the results table itself: grid_table_test.py)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import numpy as np
import pytest

from configs import mnist_grid
from ebgan_jax import classifier, config_checks, grid, population, sharding
from tests import remote_fs

REPO = pathlib.Path(__file__).resolve().parents[1]


# -- sweeps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('variant,size', [('ebgan', 512), ('ebgan_pt', 512), ('gan', 6144),
                                          ('margin_sweep', 8), ('smoke', 6)])
def test_sweep_sizes_and_distinct_points(variant, size):
  points = mnist_grid.sweep(mnist_grid.get_config(variant))
  assert len(points) == size  # Table 1: 4*4*4*4*2 = 512 architectures; GAN x 2*2*3 = 6144.
  assert len({grid.run_id(p) for p in points}) == size
  assert len({p.to_json(sort_keys=True) for p in points}) == size


def test_table1_axes_and_fixed_ebgan_settings():
  ebgan = mnist_grid.sweep(mnist_grid.get_config('ebgan'))
  assert {p.model.n_layer_g for p in ebgan} == {2, 3, 4, 5}
  assert {p.model.size_g for p in ebgan} == {400, 800, 1600, 3200}
  assert {p.model.size_d for p in ebgan} == {128, 256, 512, 1024}
  assert {p.model.dropout_d for p in ebgan} == {True, False}
  assert {(p.optim.optim_d, p.optim.optim_g, p.optim.lr_d, p.loss.margin, p.loss.pt_weight)
          for p in ebgan} == {('adam', 'adam', 0.001, 10.0, 0.0)}
  assert len({p.seed for p in ebgan}) == 512
  pt = mnist_grid.sweep(mnist_grid.get_config('ebgan_pt'))
  assert {p.loss.pt_weight for p in pt} == {0.1}
  gan = mnist_grid.sweep(mnist_grid.get_config('gan'))
  assert {(p.optim.optim_d, p.optim.optim_g, p.optim.lr_d) for p in gan} == {
      (d, g, lr) for d in ('adam', 'sgd') for g in ('adam', 'sgd') for lr in (0.01, 0.001, 1e-4)}
  # The same architecture starts from the same seed in every grid (paired comparisons).
  assert sorted({p.seed for p in gan}) == sorted({p.seed for p in ebgan})
  margins = mnist_grid.sweep(mnist_grid.get_config('margin_sweep'))
  assert [p.loss.margin for p in margins] == [1, 2, 4, 6, 8, 12, 16, 32]
  assert len(population.group_configs(margins)) == 1  # Figure 9 is one population.
  seeded = mnist_grid.sweep(mnist_grid.get_config('ebgan,seeds=3'))
  assert len(seeded) == 1536 and len(population.group_configs(seeded)) == 512


# -- shards ---------------------------------------------------------------------------------------
def test_shard_index_from_flags_and_scheduler_environment():
  assert grid.shard_from_env(4, 2, environ={}) == (4, 2)
  assert grid.shard_from_env(None, None, environ={}) == (1, 0)
  slurm = {'SLURM_ARRAY_TASK_ID': '5', 'SLURM_ARRAY_TASK_COUNT': '8'}
  assert grid.shard_from_env(None, None, environ=slurm) == (8, 5)
  one_based = {'SLURM_ARRAY_TASK_ID': '8', 'SLURM_ARRAY_TASK_MIN': '1',
               'SLURM_ARRAY_TASK_COUNT': '8'}
  assert grid.shard_from_env(None, None, environ=one_based) == (8, 7)
  assert grid.shard_from_env(16, None, environ={'JOB_COMPLETION_INDEX': '3'}) == (16, 3)
  assert grid.shard_from_env(16, 1, environ={'JOB_COMPLETION_INDEX': '3'}) == (16, 1)
  with pytest.raises(ValueError, match='outside'):
    grid.shard_from_env(4, None, environ={'JOB_COMPLETION_INDEX': '4'})


def test_shards_partition_the_populations():
  points = mnist_grid.sweep(mnist_grid.get_config('gan'))
  shards = [grid.shard_populations(points, 5, i, max_population=16) for i in range(5)]
  runs = [i for shard in shards for group in shard for i in group]
  assert sorted(runs) == list(range(len(points)))  # Every run once, in exactly one shard.
  for shard in shards:
    for group in shard:  # A population's members share shapes.
      assert len({population.shared_signature(points[i]) for i in group}) == 1


def test_compilation_cache_keeps_the_programs(tmp_path):
  # In a fresh process: JAX reads the cache setting once, at its first compile.
  script = textwrap.dedent('''
      import sys
      import jax, jax.numpy as jnp
      from ebgan_jax import grid
      grid.enable_compilation_cache(sys.argv[1])
      jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
      ''')
  cache = tmp_path / 'cache'
  env = dict(os.environ, PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, '-c', script, str(cache)], env=env, check=True, timeout=120)
  assert [p for p in cache.iterdir() if p.is_file()], 'nothing was cached'


# -- the smoke grid end to end ---------------------------------------------------------------------
def _population_configs(kind, steps, steps_per_call, strategy='auto'):
  """Two members of one signature; for 'gan' the second diverges (SGD at lr 1e30)."""
  configs = []
  for seed, lr in ((0, 0.01), (5, 1e30 if kind == 'gan' else 3e-4)):
    config = mnist_grid.get_config('smoke')
    config.seed, config.total_steps = seed, steps
    config.grid.steps_per_call = steps_per_call
    config.grid.population_strategy = strategy
    config.loss.kind = kind
    optim = 'sgd' if kind == 'gan' else 'adam'
    config.optim.optim_d = config.optim.optim_g = optim
    config.optim.lr_d = config.optim.lr_g = lr
    configs.append(config)
  return configs


def _step_by_step(configs, batches):
  """The reference: one jitted step per batch (`pop.train_step`), the tracking in numpy."""
  mesh = sharding.make_mesh()
  pop = population.create_population(configs, len(batches), mesh)
  history = []
  for images in batches:
    pop.state, metrics = pop.train_step(pop.state, sharding.global_batch(images, mesh))
    history.append(jax.device_get(metrics))
  metrics = {k: np.stack([h[k] for h in history]) for k in history[0]}  # [T, P] each
  ok = np.isfinite(metrics['d_loss']) & np.isfinite(metrics['g_loss'])
  finite = ok.all(axis=0)
  tracked = {'finite': finite, 'nan_step': np.where(finite, -1, np.argmin(ok, axis=0))}
  for k, v in metrics.items():
    tracked[f'final/{k}'] = v[-grid.programs.FINAL_WINDOW:].mean(axis=0)
  return jax.device_get(pop.state), tracked


@pytest.mark.parametrize('kind,strategy', [('gan', 'auto'), ('ebgan', 'auto'), ('gan', 'vmap')])
def test_scanned_calls_equal_one_step_per_call(kind, strategy, fast_compiles, monkeypatch):
  # 7 steps in calls of 3 (3 + 3 + a tail call of 1), of 1 and of 7 against the plain loop;
  # a window of 4 puts the tail (steps 3..6) across a call boundary. 'auto' is 'unroll' here
  # (a CPU); 'vmap' is the accelerators' strategy, whose scan carries the stacked state.
  monkeypatch.setattr(grid.programs, 'FINAL_WINDOW', 4)
  steps = 7
  batches = np.random.default_rng(1).uniform(-1, 1, (steps, 16, 32, 32, 1)).astype(np.float32)
  expected_state, expected = _step_by_step(_population_configs(kind, steps, 1), batches)
  if kind == 'gan':  # The case the tracking is for: member 1 diverges, member 0 does not.
    assert list(expected['finite']) == [True, False] and expected['nan_step'][1] >= 0
  for k in (3, 1, 7):
    configs = _population_configs(kind, steps, k, strategy)
    program = grid.compile_population(configs)
    assert (program.steps_per_call, program.run_tail is None) == (k, steps % k == 0)
    pop, tracked = grid.train_population(configs, iter(batches), program=program)
    assert sorted(tracked) == sorted(expected)
    np.testing.assert_array_equal(tracked['finite'], expected['finite'])
    np.testing.assert_array_equal(tracked['nan_step'], expected['nan_step'])
    for name in expected:
      np.testing.assert_allclose(tracked[name], expected[name], rtol=1e-5, atol=1e-6,
                                 err_msg=f'K={k}: {name}')
    state = jax.device_get(pop.state)
    assert list(state.step) == [steps, steps]
    # The scan body is the step the plain loop runs: equal up to float32 round-off. (The
    # diverged member's params are NaN in both: assert_allclose treats NaNs as equal.)
    for got, want in zip(jax.tree.leaves((state.g.params, state.d.params, state.d.batch_stats)),
                         jax.tree.leaves((expected_state.g.params, expected_state.d.params,
                                          expected_state.d.batch_stats))):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f'K={k}')


def test_a_short_batch_stream_is_an_error_not_a_shorter_run(fast_compiles):
  configs = _population_configs('ebgan', 5, 2)
  batches = np.zeros((4, 16, 32, 32, 1), np.float32)
  with pytest.raises(ValueError, match='ran out after 4 of 5 steps'):
    grid.train_population(configs, iter(batches))


@pytest.fixture(scope='module')
def untrained_classifier(tmp_path_factory):
  """A saved (untrained) classifier: the scores need one, its quality is not tested here."""
  path = tmp_path_factory.mktemp('clf') / 'classifier'
  classifier.save_classifier(path, classifier.init_params(jax.random.key(0)),
                             {'test_accuracy': 0.1})
  return path


def _smoke_points(tfds_data_dir):
  """The smoke grid, one GAN member made to diverge (SGD at lr 1e30) beside an SGD partner."""
  config = mnist_grid.get_config('smoke')
  config.tfds_data_dir = tfds_data_dir
  points = mnist_grid.sweep(config)
  diverging = next(p for p in points if p.loss.kind == 'gan' and p.optim.lr_d == 0.01)
  partner = next(p for p in points if p.loss.kind == 'gan' and p.optim.lr_d == 0.001)
  for p in (diverging, partner):
    p.optim.optim_d = p.optim.optim_g = 'sgd'
  diverging.optim.lr_d = diverging.optim.lr_g = 1e30
  return config, points, diverging


# Runs the smoke grid and SIGKILLs itself in the middle of the second population's rows: the
# first row whole, the second cut short (what a kill inside the write leaves).
_KILLED_GRID = textwrap.dedent('''
    import json, os, signal, sys
    import jax
    jax.config.update('jax_disable_most_optimizations', True)
    sys.path.insert(0, sys.argv[4])
    import grid_search_test
    from ebgan_jax.grid import runner
    workdir, classifier_dir, tfds_data_dir = sys.argv[1:4]
    _, points, _ = grid_search_test._smoke_points(tfds_data_dir)
    append_rows, calls = runner.append_rows, []

    def append_then_die(path, rows):
      calls.append(len(rows))
      if len(calls) < 2:
        return append_rows(path, rows)
      append_rows(path, rows[:1])
      with open(path, 'ab') as f:
        f.write(json.dumps(rows[1]).encode()[:50])
        f.flush()
        os.fsync(f.fileno())
      os.kill(os.getpid(), signal.SIGKILL)

    runner.append_rows = append_then_die
    runner.run_grid(points, workdir, classifier_dir=classifier_dir, compile_workers=0)
    ''')


def test_smoke_grid_killed_mid_population_resumes_nan_and_merge(tmp_path, tfds_data_dir,
                                                                 untrained_classifier,
                                                                 fast_compiles):
  config, points, diverging = _smoke_points(tfds_data_dir)
  ids = [grid.run_id(p) for p in points]
  groups = grid.shard_populations(points, 1, 0, config.grid.max_population)
  table_path = grid.shard_table(tmp_path, 'smoke', 1, 0)
  log = []

  # A grid SIGKILLed while it writes the second population's rows (a real kill, in a
  # subprocess): the first population's rows and one row of the second are in the table,
  # the next row is torn. A leftover temporary sample file of a later run (a kill inside
  # its save) is there too.
  env = dict(os.environ, PYTHONPATH=str(REPO))
  killed = subprocess.run([sys.executable, '-c', _KILLED_GRID, str(tmp_path),
                           str(untrained_classifier), tfds_data_dir, str(REPO / 'tests')],
                          env=env, timeout=600, capture_output=True, text=True)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  written = [ids[i] for i in groups[0]] + [ids[groups[1][0]]]
  assert [r['run_id'] for r in grid.read_table(table_path)] == written
  assert not table_path.read_bytes().endswith(b'\n')  # The torn line.
  leftover = tmp_path / grid.SAMPLES_DIR / f'{ids[groups[2][0]]}.npz.tmp.npz'
  leftover.write_bytes(b'PK\x03\x04 cut short')

  # The rerun trains only what has no row (the killed population's second member, alone,
  # and the last population), compiled on 2 threads, in the sweep's order.
  second = grid.run_grid(points, tmp_path, classifier_dir=untrained_classifier,
                         compile_workers=2, log=log.append)
  assert (second['finished_before'], second['trained'], second['populations']) == (3, 3, 2)
  table = grid.read_table(table_path)  # The torn line is skipped, not glued to a row.
  assert [r['run_id'] for r in table] == [ids[i] for g in groups for i in g]
  assert len(table_path.read_bytes().splitlines()) == len(points) + 1
  assert not list((tmp_path / grid.SAMPLES_DIR).glob('*.tmp*'))  # Replaced by its save.
  assert 0 < second['train_s'] + second['score_s'] + second['setup_s'] <= second['wall_s']
  assert second['runs_per_hour'] == pytest.approx(3600 * 3 / second['wall_s'], rel=1e-3)
  assert second['projected_shard_s'] >= second['setup_s']
  assert second['compile_workers'] == 2
  third = grid.run_grid(points, tmp_path, classifier_dir=untrained_classifier, log=log.append)
  assert third['trained'] == 0

  rows = grid.read_results(tmp_path)
  assert sorted(r['run_id'] for r in rows) == sorted(ids)
  by_id = {r['run_id']: r for r in rows}
  bad = by_id[grid.run_id(diverging)]
  assert bad['nan'] and bad['nan_step'] >= 0 and np.isnan(bad['i_prime'])
  for row in rows:
    if row['run_id'] == bad['run_id']:
      continue
    assert not row['nan'], row['run_id']
    for key in ('i_prime', 'inception_score', 'classifier_fid', 'final_d_loss', 'final_g_loss',
                'wall_time_s', 'compile_s', 'train_s', 'score_s'):
      assert np.isfinite(row[key]), (row['run_id'], key)
    assert sum(row['class_histogram']) == config.eval.num_samples
    assert row['seed'] == next(p.seed for p in points if grid.run_id(p) == row['run_id'])
    samples = np.load(tmp_path / grid.SAMPLES_DIR / f'{row["run_id"]}.npz')['images']
    assert samples.shape == (config.grid.num_sample_images, 32, 32, 1)
  # Every population had 2 members, but for the killed one's second member, retrained alone.
  assert [by_id[ids[i]]['population_size'] for g in groups for i in g] == [2, 2, 2, 1, 2, 2]

  merged = grid.merge(tmp_path)
  assert len(merged.read_text().splitlines()) == len(points)
  assert (tmp_path / grid.MERGED_CSV).read_text().count('\n') == len(points) + 1


def test_a_failing_compile_surfaces_after_the_populations_before_it(
    tmp_path, tfds_data_dir, untrained_classifier, fast_compiles, monkeypatch):
  config = mnist_grid.get_config('smoke')
  config.tfds_data_dir = tfds_data_dir
  points = mnist_grid.sweep(config)
  groups = grid.shard_populations(points, 1, 0, config.grid.max_population)
  bad = grid.run_id(points[groups[1][0]])
  compile_population = grid.compile_population

  def failing(configs, *args, **kwargs):
    if grid.run_id(configs[0]) == bad:
      raise RuntimeError('compile failed on purpose')
    return compile_population(configs, *args, **kwargs)

  monkeypatch.setattr(grid.runner, 'compile_population', failing)
  with pytest.raises(RuntimeError, match='on purpose'):
    grid.run_grid(points, tmp_path, classifier_dir=untrained_classifier, compile_workers=2,
                  log=lambda _: None)
  # The population before it was trained and written; nothing after it was.
  written = [r['run_id'] for r in grid.read_results(tmp_path)]
  assert written == [grid.run_id(points[i]) for i in groups[0]]


# -- bucketed populations, a remote workdir ---------------------------------------------------
def _width_bucket(tfds_data_dir, bucketing):
  """Two architectures that differ in sizeG and dropout, two seeds each, in one bucket: the
  wide one first, so that the padded population is the one that reuses the program."""
  points = []
  for seed, size_g, dropout in ((0, 32, True), (1, 32, True), (2, 16, False), (3, 16, False)):
    config = mnist_grid.get_config('smoke')
    config.tfds_data_dir = tfds_data_dir
    config.seed, config.model.size_g, config.model.dropout_d = seed, size_g, dropout
    config.grid.bucketing = bucketing
    config.grid.bucket_size_g, config.grid.bucket_size_d = (32,), (8,)
    config.grid.max_population = 2
    points.append(config)
  return points


def test_a_bucketed_grid_on_a_remote_workdir_writes_the_rows_of_the_unbucketed_one(
    tmp_path, tfds_data_dir, untrained_classifier, fast_compiles):
  bucketed = _width_bucket(tfds_data_dir, 'on')
  ids = [grid.run_id(p) for p in bucketed]
  with remote_fs.fake_gcs(tmp_path), \
      mock.patch.object(grid.runner.logging, 'warning') as warning:
    summary = grid.run_grid(bucketed, 'gs://bucket/grid', classifier_dir=untrained_classifier,
                            compile_workers=0, log=lambda _: None)
    remote = grid.read_results('gs://bucket/grid')
    grid.merge('gs://bucket/grid')
  assert any('exactly one process' in str(call.args[0]) for call in warning.call_args_list)
  # One bucket: two populations of 2, both padded to sizeG 32 and dropout, one program.
  assert (summary['trained'], summary['populations'], summary['programs']) == (4, 2, 1)
  local = tmp_path / 'bucket' / 'grid'  # What the fake bucket holds, as files.
  table = local / grid.RESULTS_DIR / 'smoke-shard0000of0001.jsonl'
  assert [json.loads(line)['run_id'] for line in table.read_bytes().splitlines()] == ids
  assert sorted(p.name for p in (local / grid.SAMPLES_DIR).iterdir()) == sorted(
      f'{i}.npz' for i in ids)  # No temporary file left.
  assert len((local / grid.MERGED_JSONL).read_text().splitlines()) == 4
  by_id = {r['run_id']: r for r in remote}
  assert [by_id[i]['padded_to'] for i in ids] == ['g32-d8'] * 4
  assert [by_id[i]['program_reused'] for i in ids] == [False, False, True, True]

  # The padded runs (sizeG 16 in a program of 32, without dropout in a program with it, in
  # the program compiled for the first population) unbucketed, at their own widths: the rows
  # have the same run ids and columns, and the same scores up to float reassociation (3 steps
  # of round-off, ~1e-6 relative in the samples). The untrained classifier is near-uniform,
  # so I' (a KL divergence) is ~1e-6 here and is compared to an absolute 1e-8.
  unbucketed = grid.run_grid(_width_bucket(tfds_data_dir, 'off')[2:], tmp_path / 'off',
                             classifier_dir=untrained_classifier, compile_workers=0,
                             log=lambda _: None)
  assert (unbucketed['populations'], unbucketed['programs']) == (1, 1)
  alone = {r['run_id']: r for r in grid.read_results(tmp_path / 'off')}
  assert sorted(alone) == sorted(ids[2:])
  for run in ids[2:]:
    assert set(alone[run]) == set(by_id[run])
    assert alone[run]['padded_to'] == ''
    for key in ('i_prime', 'inception_score', 'classifier_fid', 'final_d_loss', 'final_g_loss',
                'final_energy_real', 'final_pt'):
      np.testing.assert_allclose(by_id[run][key], alone[run][key], rtol=1e-4, atol=1e-8,
                                 err_msg=key)
    assert by_id[run]['class_histogram'] == alone[run]['class_histogram']


def test_a_bad_point_is_refused_before_any_work(tmp_path):
  points = mnist_grid.sweep(mnist_grid.get_config('smoke'))
  points[-1].loss.margin = -1.0
  with pytest.raises(config_checks.ConfigError, match=r'loss\.margin = -1\.0: must be'):
    grid.run_grid(points, tmp_path / 'grid', classifier_dir=tmp_path / 'classifier')
  assert not (tmp_path / 'grid').exists() and not (tmp_path / 'classifier').exists()
