"""Figures 2, 3, 4 and 9 of the paper from a grid-search results table (PNG + PDF).

  python -m experiments.figures --workdir=DIR [--workdir=DIR2 ...] [--out=DIR/figures]

reads the results of `experiments.grid_search` (DIR/results.jsonl when merged, else the
shard tables in DIR/results/) and the per-run sample files (DIR/samples/<run_id>.npz), and
writes:
  fig2.{png,pdf}  histograms of I' for EBGANs vs GANs: (a) all runs, (b) nLayerG and nLayerD
                  <= 4, (c) <= 3; the y-axis is the percentage of each family's runs.
  fig3.{png,pdf}  one panel per GAN optimization sub-grid (optimD, optimG, lr), each GAN
                  sub-grid's 512 runs against the 512 EBGAN runs.
  fig4.{png,pdf}  samples of the best GAN, EBGAN and EBGAN-PT (highest I').
  fig9.{png,pdf}  the margin sweep, one row of samples per m (top to bottom, increasing m).
  fig2.md         Figure 2's histograms in numbers (`summary_table`): per family, runs, NaN
                  runs, I' quartiles and the share of runs above fixed I' thresholds.
`draw_figureN(rows)` returns figure N as a matplotlib Figure (for notebooks and the tests);
`figureN(rows, out_dir)` draws and saves it. A figure whose runs are absent from the table is
skipped. Runs that went NaN have no score;
they are counted in the failed bin at I' = 0 (the lowest possible I', which is a KL
divergence) and their number is given in the legend.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from typing import Any, Callable, Iterable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags
from etils import epath

from ebgan_jax import grid, paths, sample

Row = dict[str, Any]
COLORS = {'ebgan': 'tab:blue', 'ebgan_pt': 'tab:green', 'gan': 'tab:red'}
LABELS = {'ebgan': 'EBGAN', 'ebgan_pt': 'EBGAN-PT', 'gan': 'GAN'}


def load_rows(workdirs: Iterable[paths.PathLike]) -> list[Row]:
  """The rows of one or more grid workdirs (merged table if present, else shard tables)."""
  rows: dict[str, Row] = {}
  for workdir in workdirs:
    workdir = paths.as_path(workdir)
    merged = workdir / grid.MERGED_JSONL
    found = grid.read_table(merged) if merged.exists() else grid.read_results(workdir)
    for row in found:
      row.setdefault('_workdir', str(workdir))
      rows.setdefault(row['run_id'], row)
  return list(rows.values())


def _score(row: Row, key: str = 'i_prime') -> float:
  value = row.get(key)
  if row.get('nan') or value is None or not math.isfinite(value):
    return 0.0  # Failed runs go to the lowest bin (see the module docstring).
  return float(value)


def _save(fig: plt.Figure, out_dir: epath.Path, name: str) -> list[epath.Path]:
  files = [out_dir / f'{name}.png', out_dir / f'{name}.pdf']
  for path in files:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix[1:], dpi=150, bbox_inches='tight')
    paths.write_atomic(path, buffer.getvalue())
  plt.close(fig)
  return files


def _hist(ax: plt.Axes, groups: dict[str, list[Row]], bins: np.ndarray, title: str) -> None:
  """Percentage histograms of I' of each family in `groups`."""
  for name, rows in groups.items():
    if not rows:
      continue
    scores = np.array([_score(r) for r in rows])
    failed = sum(bool(r.get('nan')) for r in rows)
    weights = np.full(len(scores), 100.0 / len(scores))
    label = (f'{_family_label(name, rows)} ({len(rows)} runs'
             + (f', {failed} NaN)' if failed else ')'))
    ax.hist(scores, bins=bins, weights=weights, alpha=0.55, color=COLORS.get(name),
            label=label)
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("I'")
  ax.set_ylabel('% of runs')
  ax.legend(fontsize=7)


def _family_label(family: str, rows: Sequence[Row]) -> str:
  """'GAN', or 'GAN [gan_slice]' for runs of a grid variant other than the family's own grid
  (e.g. the stratified GAN slice: one optimizer setting per architecture, not all 12)."""
  variants = sorted({r.get('variant', family) for r in rows} - {family})
  label = LABELS.get(family, family)
  return f'{label} [{", ".join(variants)}]' if variants else label


def _bins(rows: Sequence[Row], num: int = 30) -> np.ndarray:
  top = max([_score(r) for r in rows] + [1e-3])
  return np.linspace(0.0, top * 1.02, num + 1)


def _by_family(rows: Iterable[Row], families: Sequence[str]) -> dict[str, list[Row]]:
  return {f: [r for r in rows if r['family'] == f] for f in families}


def _save_drawn(fig: plt.Figure | None, out_dir: epath.Path, name: str
                ) -> list[epath.Path]:
  return [] if fig is None else _save(fig, out_dir, name)


def figure2(rows: Sequence[Row], out_dir: epath.Path,
            families: Sequence[str] = ('ebgan', 'gan')) -> list[epath.Path]:
  """Figure 2 (a)(b)(c): I' histograms, all runs and nLayer[GD] <= 4, <= 3."""
  return _save_drawn(draw_figure2(rows, families), out_dir, 'fig2')


def draw_figure2(rows: Sequence[Row], families: Sequence[str] = ('ebgan', 'gan')
                 ) -> plt.Figure | None:
  """Figure 2's matplotlib figure (None without runs of `families`)."""
  rows = [r for r in rows if r['family'] in families and r.get('variant') != 'margin_sweep']
  if not rows:
    return None
  bins = _bins(rows)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  limits = [(None, '(a) all'), (4, '(b) nLayer[GD] <= 4'), (3, '(c) nLayer[GD] <= 3')]
  for ax, (limit, title) in zip(axes, limits):
    keep = [r for r in rows if limit is None
            or (r['n_layer_g'] <= limit and r['n_layer_d'] <= limit)]
    _hist(ax, _by_family(keep, families), bins, title)
  fig.suptitle("Figure 2: histograms of I' from the grid search")
  return fig


THRESHOLDS = (2.0, 4.0, 6.0)  # I' bars of `summary_table` (real digits: ~8.7).


def summary_table(rows: Sequence[Row], families: Sequence[str] = ('ebgan', 'ebgan_pt', 'gan'),
                  thresholds: Sequence[float] = THRESHOLDS) -> str:
  """Figure 2 (a) in numbers, markdown: per family the runs, the NaN runs, the quartiles of
  I' (a NaN run counts as I' = 0, as in the histograms) and the % of runs with I' above each
  threshold. The paper's claim is about these shapes ("EBGANs are more reliably trained")."""
  rows = [r for r in rows if r.get('variant') != 'margin_sweep']
  head = ('| family | runs | NaN | I\' p25 | median | p75 | max | '
          + ' | '.join(f'I\' > {t:g}' for t in thresholds) + ' |')
  lines = [head, '|' + '---|' * (7 + len(thresholds))]
  for family, members in _by_family(rows, families).items():
    if not members:
      continue
    scores = np.array([_score(r) for r in members])
    p25, p50, p75 = np.percentile(scores, [25, 50, 75])
    shares = ' | '.join(f'{100 * np.mean(scores > t):.0f}%' for t in thresholds)
    lines.append(f'| {_family_label(family, members)} | {len(members)} | '
                 f'{sum(bool(r.get("nan")) for r in members)} | {p25:.2f} | {p50:.2f} | '
                 f'{p75:.2f} | {scores.max():.2f} | {shares} |')
  return '\n'.join(lines) + '\n'


def figure3(rows: Sequence[Row], out_dir: epath.Path) -> list[epath.Path]:
  """Figure 3: one panel per GAN sub-grid (optimD, optimG, lr) against all EBGAN runs."""
  return _save_drawn(draw_figure3(rows), out_dir, 'fig3')


def draw_figure3(rows: Sequence[Row]) -> plt.Figure | None:
  """Figure 3's matplotlib figure (None without GAN runs)."""
  gans = [r for r in rows if r['family'] == 'gan']
  ebgans = [r for r in rows if r['family'] == 'ebgan' and r.get('variant') != 'margin_sweep']
  if not gans:
    return None
  settings = sorted({(r['optim_d'], r['optim_g'], r['lr']) for r in gans},
                    key=lambda s: (s[0], s[1], -s[2]))
  bins = _bins(gans + ebgans)
  cols = min(len(settings), 6)
  nrows = math.ceil(len(settings) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
  for ax, setting in itertools.zip_longest(axes.flat, settings):
    if setting is None:
      ax.axis('off')
      continue
    optim_d, optim_g, lr = setting
    sub = [r for r in gans if (r['optim_d'], r['optim_g'], r['lr']) == (optim_d, optim_g, lr)]
    _hist(ax, {'ebgan': ebgans, 'gan': sub}, bins,
          f'optimD={optim_d}, optimG={optim_g}, lr={lr:g}')
  fig.suptitle("Figure 3: I' per GAN optimization sub-grid, EBGAN as reference")
  fig.tight_layout()
  return fig


def _samples(row: Row) -> np.ndarray | None:
  path = paths.as_path(row['_workdir']) / grid.SAMPLES_DIR / f'{row["run_id"]}.npz'
  if not path.exists():
    return None
  with np.load(io.BytesIO(path.read_bytes())) as data:
    return data['images']  # uint8 [N, H, W, C]


def best_runs(rows: Sequence[Row], families: Sequence[str] = ('gan', 'ebgan', 'ebgan_pt')
              ) -> dict[str, Row]:
  """The run of highest I' of each family (Figure 4's "best" models, App. C)."""
  best = {}
  for f in families:
    candidates = [r for r in rows if r['family'] == f and not r.get('nan')
                  and r.get('variant') != 'margin_sweep']
    if candidates:
      best[f] = max(candidates, key=_score)
  return best


def figure4(rows: Sequence[Row], out_dir: epath.Path, num: int = 64) -> list[epath.Path]:
  """Figure 4: samples of the best GAN (a), EBGAN (b) and EBGAN-PT (c)."""
  return _save_drawn(draw_figure4(rows, num), out_dir, 'fig4')


def draw_figure4(rows: Sequence[Row], num: int = 64) -> plt.Figure | None:
  """Figure 4's matplotlib figure (None when no best run has samples)."""
  best = best_runs(rows)
  panels = [(f, r, _samples(r)) for f, r in best.items()]
  panels = [p for p in panels if p[2] is not None]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 5), squeeze=False)
  for ax, (f, row, images), letter in zip(axes[0], panels, 'abc'):
    tile = sample.image_grid(images[:num])
    ax.imshow(tile[..., 0] if tile.shape[-1] == 1 else tile, cmap='gray')
    ax.set_title(f"({letter}) best {LABELS[f]}: I'={_score(row):.3f}\n"
                 f"nLayerG={row['n_layer_g']} nLayerD={row['n_layer_d']} "
                 f"sizeG={row['size_g']} sizeD={row['size_d']}\n"
                 f"dropoutD={int(row['dropout_d'])} {row['optim_d']}/{row['optim_g']} "
                 f"lr={row['lr']:g}", fontsize=8)
    ax.axis('off')
  fig.suptitle('Figure 4: generations of the best runs of the grid search')
  return fig


def figure9(rows: Sequence[Row], out_dir: epath.Path, per_row: int = 16
            ) -> list[epath.Path]:
  """Figure 9: one row of samples per margin m of the sweep, top to bottom by m."""
  return _save_drawn(draw_figure9(rows, per_row), out_dir, 'fig9')


def draw_figure9(rows: Sequence[Row], per_row: int = 16) -> plt.Figure | None:
  """Figure 9's matplotlib figure (None without margin-sweep runs that have samples)."""
  sweep = sorted((r for r in rows if r.get('variant') == 'margin_sweep'),
                 key=lambda r: r['margin'])
  sweep = [(r, _samples(r)) for r in sweep]
  sweep = [(r, s) for r, s in sweep if s is not None]
  if not sweep:
    return None
  fig, axes = plt.subplots(len(sweep), 1, figsize=(per_row * 0.6, 0.75 * len(sweep) + 0.6),
                           squeeze=False)
  for ax, (row, images) in zip(axes[:, 0], sweep):
    tile = sample.image_grid(images[:per_row], num_cols=per_row)
    ax.imshow(tile[..., 0], cmap='gray')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(f"m={row['margin']:g}\nI'={_score(row):.2f}", rotation=0, ha='right',
                  va='center', fontsize=8)
  fig.suptitle('Figure 9: EBGAN generations for margins m (nLayerG=5, nLayerD=2, sizeG=1600, '
               'sizeD=1024, Adam, lr 0.001)', fontsize=8)
  return fig


FIGURES: dict[str, Callable[..., list[epath.Path]]] = {
    'fig2': figure2, 'fig3': figure3, 'fig4': figure4, 'fig9': figure9}


def draw_all(rows: Sequence[Row], out_dir: str | epath.Path) -> dict[str, list[epath.Path]]:
  """Every figure the rows allow; {name: written paths} (empty for a skipped figure)."""
  out_dir = paths.as_path(out_dir)
  written = {name: fn(rows, out_dir) for name, fn in FIGURES.items()}
  if written['fig2']:
    paths.write_atomic(out_dir / 'fig2.md', summary_table(rows))
    written['fig2'].append(out_dir / 'fig2.md')
  return written


def run(workdirs: Sequence[paths.PathLike], out: paths.PathLike = '') -> dict[str, list]:
  """Draws every figure the tables of `workdirs` allow into `out` (default FIRST/figures)."""
  rows = load_rows(workdirs)
  out = out or paths.as_path(workdirs[0]) / 'figures'
  return draw_all(rows, out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  matplotlib.use('Agg')  # Files only (a notebook importing this module keeps its backend).
  written = run(FLAGS.workdir, FLAGS.out)
  print(json.dumps({k: [str(p) for p in v] for k, v in written.items()}, indent=1))


if __name__ == '__main__':
  flags.DEFINE_multi_string('workdir', None, 'Grid workdir (local or gs://; repeat it to '
                            'combine tables, e.g. the EBGAN and the GAN grids).', required=True)
  flags.DEFINE_string('out', '', 'Output folder for fig{2,3,4,9}.{png,pdf} (default '
                      'FIRST_WORKDIR/figures).')
  FLAGS = flags.FLAGS
  app.run(main)
