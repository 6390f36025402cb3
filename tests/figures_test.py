"""Figures 2, 3, 4 and 9 drawn from a small synthetic results table."""

import itertools
import json
import pathlib

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from ebgan_jax import grid, sample  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import figures  # pylint: disable=g-import-not-at-top,wrong-import-position


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


def test_best_runs_pick_the_highest_finite_score(tmp_path):
  rows = figures.load_rows([_synthetic_workdir(tmp_path)])
  best = figures.best_runs(rows)
  for family in ('gan', 'ebgan', 'ebgan_pt'):
    scores = [r['i_prime'] for r in rows if r['family'] == family and not r['nan']
              and r['variant'] != 'margin_sweep']
    assert best[family]['i_prime'] == max(scores)
  assert best['ebgan']['variant'] != 'margin_sweep'


# -- the drawn artists against the table ---------------------------------------------------------
# The expected numbers come from the rows: I' with a NaN run at 0 (the failed bin), 30 bins
# from 0 to 1.02 x the best score of the runs drawn, each family's bars in % of its runs.

def _scores(rows):
  return np.array([0.0 if r['nan'] else r['i_prime'] for r in rows])


def _percent_histogram(rows, bins):
  return np.histogram(_scores(rows), bins=bins, weights=np.full(len(rows), 100 / len(rows)))[0]


def _bars(ax):
  """(left edges, heights) of each `hist` drawn on `ax`, in drawing order."""
  return [(np.array([p.get_x() for p in c.patches]), np.array([p.get_height() for p in c.patches]))
          for c in ax.containers]


def _legend(ax):
  return [t.get_text() for t in ax.get_legend().get_texts()]


@pytest.fixture
def rows(tmp_path):
  yield figures.load_rows([_synthetic_workdir(tmp_path)])
  plt.close('all')


def test_figure2_histograms_match_the_table(rows):
  fig = figures.draw_figure2(rows)
  runs = [r for r in rows if r['family'] in ('ebgan', 'gan') and r['variant'] != 'margin_sweep']
  bins = np.linspace(0, 1.02 * _scores(runs).max(), 31)
  assert len(fig.axes) == 3  # (a), (b), (c)
  for ax, limit in zip(fig.axes, (5, 4, 3)):
    keep = [r for r in runs if r['n_layer_g'] <= limit and r['n_layer_d'] <= limit]
    families = [[r for r in keep if r['family'] == f] for f in ('ebgan', 'gan')]
    drawn = _bars(ax)
    assert len(drawn) == 2
    for (left, heights), family in zip(drawn, families):
      np.testing.assert_allclose(left, bins[:-1], atol=1e-9)
      np.testing.assert_allclose(heights, _percent_histogram(family, bins), atol=1e-9)
  # 16 architectures; GAN: x 8 optimization settings, NaN for nLayerG = 5 at lr 0.01 (4 x 4).
  assert _legend(fig.axes[0]) == ['EBGAN (16 runs)', 'GAN (128 runs, 16 NaN)']
  assert _legend(fig.axes[1]) == ['EBGAN (9 runs)', 'GAN (72 runs)']
  assert _legend(fig.axes[2]) == ['EBGAN (4 runs)', 'GAN (32 runs)']


def test_a_gan_slice_is_named_in_the_legend(rows):
  # The stratified slice gives each architecture one GAN setting, not all of them: a reader
  # must not take its histogram for the full GAN grid's.
  for row in rows:
    if row['family'] == 'gan':
      row['variant'] = 'gan_slice'
  fig = figures.draw_figure2(rows)
  assert _legend(fig.axes[0]) == ['EBGAN (16 runs)', 'GAN [gan_slice] (128 runs, 16 NaN)']


def test_figure3_has_one_panel_per_gan_subgrid(rows):
  fig = figures.draw_figure3(rows)
  gans = [r for r in rows if r['family'] == 'gan']
  ebgans = [r for r in rows if r['family'] == 'ebgan' and r['variant'] != 'margin_sweep']
  bins = np.linspace(0, 1.02 * _scores(gans + ebgans).max(), 31)
  # 2 optimD x 2 optimG x 2 lr = 8 panels on a 2 x 6 grid; the 4 spare axes are off.
  assert len(fig.axes) == 12
  panels = [ax for ax in fig.axes if ax.axison]
  settings = [(d, g, lr) for d in ('adam', 'sgd') for g in ('adam', 'sgd') for lr in (0.01, 0.001)]
  assert [ax.get_title() for ax in panels] == [
      f'optimD={d}, optimG={g}, lr={lr:g}' for d, g, lr in settings]
  assert not any(ax.containers for ax in fig.axes if not ax.axison)
  for ax, (d, g, lr) in zip(panels, settings):
    sub = [r for r in gans if (r['optim_d'], r['optim_g'], r['lr']) == (d, g, lr)]
    (_, ebgan_heights), (_, gan_heights) = _bars(ax)
    np.testing.assert_allclose(ebgan_heights, _percent_histogram(ebgans, bins), atol=1e-9)
    np.testing.assert_allclose(gan_heights, _percent_histogram(sub, bins), atol=1e-9)
    nan = sum(r['nan'] for r in sub)
    assert _legend(ax)[1] == 'GAN (16 runs' + (f', {nan} NaN)' if nan else ')')


def _sample_file(row):
  with np.load(pathlib.Path(row['_workdir']) / grid.SAMPLES_DIR / f'{row["run_id"]}.npz') as f:
    return f['images']


def test_figure4_shows_the_samples_of_each_familys_best_run(rows):
  fig = figures.draw_figure4(rows)
  assert len(fig.axes) == 3
  for ax, letter, family, label in zip(fig.axes, 'abc', ('gan', 'ebgan', 'ebgan_pt'),
                                       ('GAN', 'EBGAN', 'EBGAN-PT')):
    runs = [r for r in rows if r['family'] == family and not r['nan']
            and r['variant'] != 'margin_sweep']
    best = max(runs, key=lambda r: r['i_prime'])
    assert ax.get_title().startswith(f"({letter}) best {label}: I'={best['i_prime']:.3f}\n")
    (image,) = ax.images
    np.testing.assert_array_equal(image.get_array(), sample.image_grid(_sample_file(best))[..., 0])


def test_figure9_has_one_row_of_samples_per_margin_in_increasing_order(rows):
  fig = figures.draw_figure9(rows)
  sweep = sorted((r for r in rows if r['variant'] == 'margin_sweep'), key=lambda r: r['margin'])
  assert [r['margin'] for r in sweep] == [1.0, 2.0, 4.0, 32.0]
  assert len(fig.axes) == 4
  # I' = m / 4 in the synthetic table.
  assert [ax.get_ylabel() for ax in fig.axes] == [
      "m=1\nI'=0.25", "m=2\nI'=0.50", "m=4\nI'=1.00", "m=32\nI'=8.00"]
  for ax, row in zip(fig.axes, sweep):
    (image,) = ax.images
    expected = sample.image_grid(_sample_file(row)[:16], num_cols=16)[..., 0]
    np.testing.assert_array_equal(image.get_array(), expected)


def test_a_figure_without_its_runs_is_skipped(rows, tmp_path):
  no_gans = [r for r in rows if r['family'] != 'gan']
  assert figures.draw_figure3(no_gans) is None
  assert figures.figure3(no_gans, tmp_path / 'f3') == []
  assert figures.draw_figure9([r for r in rows if r['variant'] != 'margin_sweep']) is None


def test_nan_runs_count_in_the_lowest_bin():
  assert figures._score({'i_prime': float('nan'), 'nan': True}) == 0.0  # pylint: disable=protected-access
  assert figures._score({'i_prime': 3.5, 'nan': False}) == 3.5  # pylint: disable=protected-access


def test_every_figure_is_written_as_png_and_pdf_into_workdir_figures(tmp_path):
  workdir = _synthetic_workdir(tmp_path)
  grid.merge(workdir)  # The merged table is read when present.
  written = figures.run([workdir])
  assert sorted(written) == ['fig2', 'fig3', 'fig4', 'fig9']
  for name, paths in written.items():
    paths = [str(p) for p in paths]
    exts = ('png', 'pdf', 'md') if name == 'fig2' else ('png', 'pdf')
    assert paths == [str(workdir / 'figures' / f'{name}.{ext}') for ext in exts]
    for path in map(pathlib.Path, paths[:2]):
      assert path.read_bytes()[:4] in (b'\x89PNG', b'%PDF'), path
  assert (workdir / 'figures' / 'fig2.md').read_text().startswith('| family | runs | NaN |')


def test_summary_table_counts_quartiles_and_shares_worked_by_hand():
  # EBGAN I' 1, 3, 5, 7 (p25 2.5, median 4, p75 5.5 by linear interpolation; > 2: 3 of 4,
  # > 4: 2, > 6: 1). GAN 0 (NaN), 0.5, 6.5: p25 0.25, median 0.5, p75 3.5; > 2: 1 of 3.
  rows = [_row('ebgan', 2, 2, i_prime=v) for v in (1.0, 3.0, 5.0, 7.0)]
  rows += [_row('gan', 2, 2, nan=True), _row('gan', 2, 2, i_prime=0.5),
           _row('gan', 2, 2, i_prime=6.5),
           _row('ebgan', 5, 2, margin=1.0, i_prime=9.0, variant='margin_sweep')]  # Left out.
  lines = figures.summary_table(rows).splitlines()
  assert len(lines) == 4  # Header, rule, EBGAN, GAN (no EBGAN-PT runs: no row).
  assert lines[2] == '| EBGAN | 4 | 0 | 2.50 | 4.00 | 5.50 | 7.00 | 75% | 50% | 25% |'
  assert lines[3] == '| GAN | 3 | 1 | 0.25 | 0.50 | 3.50 | 6.50 | 33% | 33% | 33% |'
