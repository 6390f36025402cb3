"""Runs side by side: their scores at their best and latest checkpoints, and their samples.

`python -m ebgan_jax.evaluate --workdir=A --workdir=B ...` prints `markdown_table` of
`compare_runs` and writes `write_sample_grids`. Every run is scored by its own `Evaluator`
(the same number of samples, drawn from its own evaluation key, as its training-time
scores), and, where the scores use the offline classifier, a last row gives what real digits
score (a perfect generator's).
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from ebgan_jax import evaluator as evaluator_lib  # pylint: disable=wrong-import-position
from ebgan_jax import paths, sample, workdir as workdir_lib  # pylint: disable=wrong-import-position

COLUMNS = (('i_prime', "I'"), ('inception_score', 'IS'), ('classifier_fid', 'classifier FID'),
           ('fid', 'FID'), ('kid', 'KID'), ('precision', 'precision'), ('recall', 'recall'),
           ('modes_covered', 'modes'))
GRID_IMAGES = 64


def run_names(workdirs: Sequence[paths.PathLike]) -> list[str]:
  """Short names for the runs: their folder names, with the parent where two share one."""
  folders = [paths.as_path(w) for w in workdirs]
  names = [f.name for f in folders]
  return [f'{f.parent.name}/{f.name}' if names.count(f.name) > 1 else f.name
          for f in folders]


def compare_runs(workdirs: Sequence[paths.PathLike], *, classifier_dir: str | None = None,
                 num_samples: int | None = None
                 ) -> tuple[list[dict[str, Any]], list[tuple[str, np.ndarray]]]:
  """(table rows, [(title, uint8 images [64, H, W, C]) per run from its latest checkpoint])."""
  rows, grids, real = [], [], None
  for name, workdir in zip(run_names(workdirs), workdirs):
    config = workdir_lib.load_config(workdir)
    scorer = evaluator_lib.Evaluator(config, classifier_dir=classifier_dir,
                                     num_samples=num_samples)
    seen = {}
    for which in ('best', 'latest'):
      try:
        trainer, state, step = sample.load_generator(workdir, which)
      except ValueError:  # No best checkpoint kept.
        rows.append(dict(run=name, checkpoint=which, step=None))
        continue
      images = scorer.generate(trainer, state) if scorer.enabled else None
      if which == 'latest':
        grid = images if images is not None else sample.generate_images(
            trainer, state, GRID_IMAGES, evaluator_lib.eval_key(config))
        grids.append((f'{name} (step {step})', grid[:GRID_IMAGES]))
      if step in seen:
        seen[step]['checkpoint'] = 'best = latest'
        continue
      row = dict(run=name, checkpoint=which, step=step,
                 **(scorer.score_images(images) if images is not None else {}))
      row.pop('class_histogram', None)
      seen[step] = row
      rows.append(row)
    if scorer.kind == 'classifier' and real is None:
      real = dict(run='real digits', checkpoint='train split', step=None,
                  **scorer.real_scores())
  if real is not None:
    rows.append(real)
  return rows, grids


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """One Markdown table, a row per (run, checkpoint), a column per score any row has."""
  columns = [(key, label) for key, label in COLUMNS if any(key in r for r in rows)]

  def cell(row, key):
    value = row.get(key)
    if value is None:
      return '-'
    return f'{value:.0f}' if key == 'modes_covered' else f'{value:.4g}'

  lines = ['| run | checkpoint | step | ' + ' | '.join(label for _, label in columns) + ' |',
           '|---|---|---|' + '---|' * len(columns)]
  for row in rows:
    step = '-' if row.get('step') is None else str(row['step'])
    lines.append(f'| {row["run"]} | {row["checkpoint"]} | {step} | '
                 + ' | '.join(cell(row, key) for key, _ in columns) + ' |')
  return '\n'.join(lines)


def write_sample_grids(out: paths.PathLike, grids: Sequence[tuple[str, np.ndarray]]) -> None:
  """The runs' sample grids side by side, titled with the run names, as one PNG."""
  fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.4), squeeze=False)
  for ax, (title, images) in zip(axes[0], grids):
    grid = sample.image_grid(images)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap='gray', vmin=0, vmax=255)
    ax.set_title(title, fontsize=10)
    ax.axis('off')
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  paths.write_atomic(out, buffer.getvalue())
