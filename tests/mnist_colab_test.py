"""experiments/mnist_colab.ipynb runs end to end at a tiny budget (so it cannot rot)."""

import pathlib

import pytest

nbclient = pytest.importorskip('nbclient')
nbformat = pytest.importorskip('nbformat')

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / 'experiments' / 'mnist_colab.ipynb'


def test_notebook_runs_end_to_end_at_a_tiny_budget(tmp_path, tfds_data_dir, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # The checkout is already installed here: drop the pip cell, keep every other cell.
  nb.cells = [c for c in nb.cells if 'install' not in c.get('metadata', {}).get('tags', [])]
  monkeypatch.setenv('EBGAN_NOTEBOOK_BUDGET', 'tiny')
  monkeypatch.setenv('EBGAN_NOTEBOOK_WORKDIR', str(tmp_path / 'colab'))
  monkeypatch.setenv('TFDS_DATA_DIR', tfds_data_dir)  # The embedded digits, prepared once.
  monkeypatch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')  # Tiny models: compiles dominate.
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                                   resources={'metadata': {'path': str(REPO)}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  assert not [o for o in outputs if o.get('output_type') == 'error']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(images) >= 3  # Figure 4 of the trained models, Figure 2 and Figure 4 of the grid.
  for name in ('fig2.png', 'fig4.png'):
    assert (tmp_path / 'colab' / 'figures' / name).exists()
  assert (tmp_path / 'colab' / 'grid' / 'results.jsonl').exists()
