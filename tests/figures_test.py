"""Figures 2, 3, 4 and 9 drawn from a small synthetic results table."""

import itertools
import json
import pathlib

import numpy as np

from ebgan_jax import grid
from experiments import figures


def _row(family, n_layer_g, n_layer_d, optim_d='adam', optim_g='adam', lr=0.001, margin=10.0,
         i_prime=1.0, nan=False, variant=None):
  run_id = f'{family}-{n_layer_g}-{n_layer_d}-{optim_d}-{optim_g}-{lr}-{margin}'
  return dict(run_id=run_id, family=family, variant=variant or family, n_layer_g=n_layer_g,
              n_layer_d=n_layer_d, size_g=400, size_d=128, dropout_d=False, optim_d=optim_d,
              optim_g=optim_g, lr=lr, margin=margin, i_prime=float('nan') if nan else i_prime,
              nan=nan)


def _synthetic_workdir(tmp_path: pathlib.Path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  rows = []
  for g, d in itertools.product((2, 3, 4, 5), repeat=2):
    rows.append(_row('ebgan', g, d, i_prime=rng.uniform(5, 9)))
    rows.append(_row('ebgan_pt', g, d, i_prime=rng.uniform(5, 9)))
    for od, og, lr in itertools.product(('adam', 'sgd'), ('adam', 'sgd'), (0.01, 0.001)):
      rows.append(_row('gan', g, d, od, og, lr, i_prime=rng.uniform(0, 9),
                       nan=(g == 5 and lr == 0.01)))
  for m in (1.0, 2.0, 4.0, 32.0):
    rows.append(_row('ebgan', 5, 2, margin=m, i_prime=m / 4, variant='margin_sweep'))
  table = tmp_path / grid.RESULTS_DIR / 'synthetic-shard0000of0001.jsonl'
  for row in rows:
    grid.append_row(table, row)
  for row in rows:
    if row['family'] != 'gan' or row['i_prime'] > 8 or row['variant'] == 'margin_sweep':
      images = rng.integers(0, 256, size=(20, 32, 32, 1), dtype=np.uint8)
      np.savez(_mkdir(tmp_path / grid.SAMPLES_DIR) / f'{row["run_id"]}.npz', images=images)
  return tmp_path


def _mkdir(path):
  path.mkdir(parents=True, exist_ok=True)
  return path


def test_all_figures_are_written_as_png_and_pdf(tmp_path):
  workdir = _synthetic_workdir(tmp_path)
  grid.merge(workdir)
  written = figures.draw_all(figures.load_rows([workdir]), tmp_path / 'figures')
  assert sorted(written) == ['fig2', 'fig3', 'fig4', 'fig9']
  for name, paths in written.items():
    assert [p.suffix for p in paths] == ['.png', '.pdf'], name
    for path in paths:
      assert path.stat().st_size > 1000, path


def test_best_runs_pick_the_highest_finite_score(tmp_path):
  rows = figures.load_rows([_synthetic_workdir(tmp_path)])
  best = figures.best_runs(rows)
  for family in ('gan', 'ebgan', 'ebgan_pt'):
    scores = [r['i_prime'] for r in rows if r['family'] == family and not r['nan']
              and r['variant'] != 'margin_sweep']
    assert best[family]['i_prime'] == max(scores)
  assert best['ebgan']['variant'] != 'margin_sweep'


def test_figure3_has_one_panel_per_gan_subgrid(tmp_path):
  rows = figures.load_rows([_synthetic_workdir(tmp_path)])
  settings = {(r['optim_d'], r['optim_g'], r['lr']) for r in rows if r['family'] == 'gan'}
  assert len(settings) == 8  # 2 optimD x 2 optimG x 2 lr in the synthetic table.
  assert figures.figure3(rows, tmp_path / 'f3')


def test_nan_runs_count_in_the_lowest_bin():
  assert figures._score({'i_prime': float('nan'), 'nan': True}) == 0.0  # pylint: disable=protected-access
  assert figures._score({'i_prime': 3.5, 'nan': False}) == 3.5  # pylint: disable=protected-access


def test_cli_writes_into_workdir_figures(tmp_path, capsys):
  workdir = _synthetic_workdir(tmp_path)
  figures.main(['--workdir', str(workdir)])
  out = json.loads(capsys.readouterr().out)
  assert (workdir / 'figures' / 'fig2.png').exists()
  assert out['fig9']
