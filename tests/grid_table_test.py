"""The grid's results table: concurrent writers, torn lines, and remote (gs://) workdirs."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
from etils import epath

from ebgan_jax import grid
from tests import remote_fs

REPO = pathlib.Path(__file__).resolve().parents[1]


_WRITER = textwrap.dedent('''
    import sys
    from ebgan_jax import grid
    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(count):
      # Rows far larger than PIPE_BUF (4 KiB): an unlocked append could interleave them.
      grid.append_row(path, {'run_id': f'{name}-{i}', 'writer': name, 'i': i,
                             'payload': name * 20000})
    ''')


def test_two_concurrent_processes_do_not_corrupt_the_table(tmp_path):
  # Worst case: two processes append to one table at once (e.g. one shard started twice);
  # two shards write to two files, which is easier still.
  table = tmp_path / 'results' / 'smoke-shard0000of0001.jsonl'
  env = dict(os.environ, PYTHONPATH=str(REPO))
  procs = [subprocess.Popen([sys.executable, '-c', _WRITER, str(table), name, '150'], env=env)
           for name in ('a', 'b')]
  assert [p.wait(timeout=240) for p in procs] == [0, 0]
  lines = table.read_bytes().splitlines()
  assert len(lines) == 300
  rows = [json.loads(line) for line in lines]  # Every line is one whole row.
  for name in ('a', 'b'):
    assert [r['i'] for r in rows if r['writer'] == name] == list(range(150))
    assert all(r['payload'] == name * 20000 for r in rows if r['writer'] == name)


def test_a_torn_last_line_is_skipped_and_not_glued_to_the_next_row(tmp_path):
  table = tmp_path / 'results' / 't.jsonl'
  grid.append_row(table, {'run_id': 'a'})
  with open(table, 'a', encoding='utf-8') as f:
    f.write('{"run_id": "b", "i_pr')  # A writer killed mid-line.
  grid.append_row(table, {'run_id': 'c'})
  assert [r['run_id'] for r in grid.read_table(table)] == ['a', 'c']


def test_a_remote_table_is_rewritten_whole_and_keeps_every_row(tmp_path):
  root = tmp_path / 'bucket'
  table = 'gs://bucket/grid/results/t-shard0000of0001.jsonl'
  with remote_fs.fake_gcs(tmp_path):  # gs://bucket/... is tmp_path/bucket/...
    assert grid.is_remote(table) and not grid.is_remote(tmp_path)
    grid.append_rows(table, [{'run_id': 'a'}, {'run_id': 'b'}])
    local = root / 'grid' / 'results' / 't-shard0000of0001.jsonl'
    with open(local, 'a', encoding='utf-8') as f:
      f.write('{"run_id": "c", "i_pr')  # A torn last line (e.g. the file copied mid-write).
    grid.append_row(table, {'run_id': 'd'})
    assert [r['run_id'] for r in grid.read_table(table)] == ['a', 'b', 'd']
    assert local.read_text().splitlines()[-1] == '{"run_id": "d"}'
    grid.save_samples('gs://bucket/grid/samples/d.npz', np.zeros((2, 4, 4, 1), np.uint8))
    assert [r['run_id'] for r in grid.read_results('gs://bucket/grid')] == ['a', 'b', 'd']
    merged = grid.merge('gs://bucket/grid')
    assert isinstance(merged, epath.Path) and os.fspath(merged).startswith('gs://')
  # Everything went to the bucket's folder, whole, with no temporary object left behind.
  assert sorted(p.name for p in (root / 'grid').rglob('*') if p.is_file()) == [
      'd.npz', 'results.csv', 'results.jsonl', 't-shard0000of0001.jsonl']
  assert np.load(root / 'grid' / 'samples' / 'd.npz')['images'].shape == (2, 4, 4, 1)
  assert len((root / 'grid' / 'results.jsonl').read_text().splitlines()) == 3
