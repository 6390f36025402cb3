"""The results table: one JSON line per finished run, per shard; the sample files; the merge.

Each shard appends JSON lines to its own file `results/<variant>-shard<i>of<n>.jsonl`, one
`write` of one whole line per run under an exclusive `fcntl` lock, followed by `fsync`: two
processes on one shared workdir (two shards, or the same shard started twice) never
interleave or truncate each other's rows, and a process killed mid-write leaves at most one
torn last line, which readers skip. `merge(workdir)` combines every shard file into
`results.jsonl` and `results.csv` (one row per run id).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pathlib
from typing import Any

import numpy as np
from absl import logging

RESULTS_DIR = 'results'
SAMPLES_DIR = 'samples'
MERGED_JSONL = 'results.jsonl'
MERGED_CSV = 'results.csv'


def shard_table(workdir: str | os.PathLike, variant: str, num_shards: int,
                shard_index: int) -> pathlib.Path:
  return (pathlib.Path(workdir) / RESULTS_DIR /
          f'{variant}-shard{shard_index:04d}of{num_shards:04d}.jsonl')


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
  """Appends `row` as one JSON line: one write under an exclusive lock, then fsync."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  line = (json.dumps(row, sort_keys=True, allow_nan=True) + '\n').encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      # A torn last line (a writer killed mid-line) would glue onto this row: start afresh.
      size = os.fstat(fd).st_size
      if size:
        with open(path, 'rb') as f:
          f.seek(size - 1)
          if f.read(1) != b'\n':
            line = b'\n' + line
      written = 0
      while written < len(line):
        written += os.write(fd, line[written:])
      os.fsync(fd)
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of one JSONL table; unparsable (torn) lines are skipped with a warning."""
  rows = []
  path = pathlib.Path(path)
  if not path.exists():
    return rows
  with open(path, 'rb') as f:
    fcntl.flock(f, fcntl.LOCK_SH)
    data = f.read()
    fcntl.flock(f, fcntl.LOCK_UN)
  for number, line in enumerate(data.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      logging.warning('Skipping the unreadable line %d of %s (a write cut short).', number, path)
  return rows


def read_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every row of every shard table in `workdir/results`, one per run id (the first written)."""
  rows: dict[str, dict[str, Any]] = {}
  for path in sorted((pathlib.Path(workdir) / RESULTS_DIR).glob('*.jsonl')):
    for row in read_table(path):
      rows.setdefault(row['run_id'], row)
  return list(rows.values())


def merge(workdir: str | os.PathLike) -> pathlib.Path:
  """Combines the shard tables into `workdir/results.jsonl` and `results.csv` (atomically)."""
  workdir = pathlib.Path(workdir)
  rows = sorted(read_results(workdir), key=lambda r: r['run_id'])
  tmp = workdir / (MERGED_JSONL + '.tmp')
  with open(tmp, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + '\n')
  tmp.replace(workdir / MERGED_JSONL)
  columns = sorted({k for row in rows for k in row})
  tmp = workdir / (MERGED_CSV + '.tmp')
  with open(tmp, 'w', encoding='utf-8', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                       for k, v in row.items()})
  tmp.replace(workdir / MERGED_CSV)
  return workdir / MERGED_JSONL



def save_samples(path: pathlib.Path, images: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez_compressed(tmp, images=images)
  tmp.replace(path)
