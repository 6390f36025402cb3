"""The results table: one JSON line per finished run, per shard; the sample files; the merge.

Every path is an `etils.epath.Path`, so a workdir may be local or remote (`gs://...`).

Local workdirs. Each shard appends JSON lines to its own file
`results/<variant>-shard<i>of<n>.jsonl`, one `write` of whole lines under an exclusive
`fcntl` lock, followed by `fsync`: two processes on one shared workdir (two shards, or the
same shard started twice) never interleave or truncate each other's rows, and a process
killed mid-write leaves at most one torn last line, which readers skip and the next append
starts a new line after.

Remote workdirs (a URI such as `gs://bucket/grid`). Object stores have neither `fcntl`
locks nor appends. There each shard owns its file: an append reads it, adds the lines and
writes it whole to a temporary object, which then replaces the table (an object is
replaced whole: a reader sees the old table or the new one, never a torn one). Two
processes appending to one shard's file would lose each other's rows, so **on a remote
workdir each shard must run in exactly one process at a time** (`run_grid` warns); distinct
shards write distinct files and may run at once. Each append rewrites the whole file, so
rows are appended a population at a time (`append_rows`).

`merge(workdir)` combines every shard file into `results.jsonl` and `results.csv` (one row
per run id).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from typing import Any, Sequence

import numpy as np
from absl import logging
from etils import epath

RESULTS_DIR = 'results'
SAMPLES_DIR = 'samples'
MERGED_JSONL = 'results.jsonl'
MERGED_CSV = 'results.csv'
REMOTE_WARNING = ('The workdir {workdir} is remote: its results tables have no lock there, so '
                  'each shard must run in exactly one process at a time (distinct shards may '
                  'run at once).')


def is_remote(path: epath.PathLike) -> bool:
  """Whether `path` is a URI (`gs://`, `s3://`, ...) rather than a local file system path."""
  return '://' in os.fspath(path)


def shard_table(workdir: epath.PathLike, variant: str, num_shards: int,
                shard_index: int) -> epath.Path:
  return (epath.Path(workdir) / RESULTS_DIR /
          f'{variant}-shard{shard_index:04d}of{num_shards:04d}.jsonl')


def _lines(rows: Sequence[dict[str, Any]]) -> bytes:
  return b''.join((json.dumps(row, sort_keys=True, allow_nan=True) + '\n').encode()
                  for row in rows)


def append_rows(path: epath.PathLike, rows: Sequence[dict[str, Any]]) -> None:
  """Appends `rows` as JSON lines: locally one write under an exclusive lock, then fsync;
  remotely the table rewritten whole (module docstring)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  lines = _lines(rows)
  if is_remote(path):
    old = path.read_bytes() if path.exists() else b''
    if old and not old.endswith(b'\n'):
      old += b'\n'  # A torn last line stays a line of its own (and is skipped).
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_bytes(old + lines)
    tmp.replace(path)
    return
  fd = os.open(os.fspath(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      # A torn last line (a writer killed mid-line) would glue onto this row: start afresh.
      size = os.fstat(fd).st_size
      if size:
        with open(os.fspath(path), 'rb') as f:
          f.seek(size - 1)
          if f.read(1) != b'\n':
            lines = b'\n' + lines
      written = 0
      while written < len(lines):
        written += os.write(fd, lines[written:])
      os.fsync(fd)
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def append_row(path: epath.PathLike, row: dict[str, Any]) -> None:
  """Appends one row (`append_rows`)."""
  append_rows(path, [row])


def read_table(path: epath.PathLike) -> list[dict[str, Any]]:
  """The rows of one JSONL table; unparsable (torn) lines are skipped with a warning."""
  rows = []
  path = epath.Path(path)
  if not path.exists():
    return rows
  if is_remote(path):
    data = path.read_bytes()
  else:
    with open(os.fspath(path), 'rb') as f:
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


def read_results(workdir: epath.PathLike) -> list[dict[str, Any]]:
  """Every row of every shard table in `workdir/results`, one per run id (the first written)."""
  rows: dict[str, dict[str, Any]] = {}
  results = epath.Path(workdir) / RESULTS_DIR
  if not results.exists():
    return []
  for path in sorted(results.glob('*.jsonl'), key=os.fspath):
    for row in read_table(path):
      rows.setdefault(row['run_id'], row)
  return list(rows.values())


def _write_atomically(path: epath.Path, data: bytes) -> None:
  """Writes a temporary file beside `path`, then replaces `path` with it."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(data)
  tmp.replace(path)


def merge(workdir: epath.PathLike) -> epath.Path:
  """Combines the shard tables into `workdir/results.jsonl` and `results.csv` (atomically)."""
  workdir = epath.Path(workdir)
  rows = sorted(read_results(workdir), key=lambda r: r['run_id'])
  _write_atomically(workdir / MERGED_JSONL,
                    ''.join(json.dumps(row, sort_keys=True) + '\n' for row in rows).encode())
  columns = sorted({k for row in rows for k in row})
  text = io.StringIO(newline='')
  writer = csv.DictWriter(text, fieldnames=columns)
  writer.writeheader()
  for row in rows:
    writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                     for k, v in row.items()})
  _write_atomically(workdir / MERGED_CSV, text.getvalue().encode())
  return workdir / MERGED_JSONL


def save_samples(path: epath.PathLike, images: np.ndarray) -> None:
  """Saves `images` as `path` (.npz): written whole to a temporary file, then renamed, so a
  process killed mid-save leaves only the temporary file, which the next save replaces."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, images=images)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  tmp.write_bytes(buffer.getvalue())
  tmp.replace(path)
