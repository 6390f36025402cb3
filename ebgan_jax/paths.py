"""One path type for local and remote files, and the file operations object stores lack.

Every file the project reads or writes goes through `etils.epath.Path`, the path type orbax
itself uses: a local path, or a remote one such as `gs://bucket/run` (epath reads and writes
remote files through TensorFlow's gfile when TensorFlow is installed, else through fsspec,
which needs the scheme's package, e.g. `gcsfs` for gs://). `pathlib` would turn
`gs://bucket/run` into the local folder `./gs:/bucket/run`.

Object stores have no appends, no atomic renames and no file locks, so three operations
differ between local and remote paths:
- `write_atomic(path, data)`: local, a temporary file renamed over `path`; remote, one object
  write (atomic on GCS and S3). Readers never see half a file.
- `AppendLog`: an append-only log (metrics.jsonl, TensorBoard event files). Local: appended
  and flushed. Remote: the object is rewritten whole at each `flush()` from a spool of what
  was written (what `tensorboard`'s own gfile does for file systems that cannot append), so a
  preempted run keeps what it flushed.
- `file_lock(path)`: an exclusive `fcntl` lock for processes sharing a local (or NFS) folder.
  A remote path has no lock; the callers that need one say what to do instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from typing import Iterator

from etils import epath

PathLike = epath.PathLike


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`; local paths with `~` expanded and made absolute.

  orbax needs absolute local paths; remote ones (`gs://...`) are left as they are.
  """
  path = epath.Path(path)
  if is_remote(path):
    return path
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def is_remote(path: PathLike) -> bool:
  """Whether `path` names a remote file system (a URL scheme such as gs:// or s3://)."""
  return '://' in os.fspath(path)


def write_atomic(path: PathLike, data: bytes | str) -> None:
  """Writes `data` to `path` so that a reader sees the old or the new file, never a part."""
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    path.write_bytes(payload)  # One object upload: atomic.
    return
  tmp = path.with_name(f'.{path.name}.{uuid.uuid4().hex[:8]}.tmp')
  with open(tmp, 'wb') as f:
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class AppendLog:
  """An append-only file: `write` bytes, `flush` to make them durable, `close`.

  Reopening an existing file continues it (a resumed run appends to its metrics.jsonl).
  """

  def __init__(self, path: PathLike):
    self.path = as_path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._remote = is_remote(self.path)
    if self._remote:
      self._spool = bytearray(self.path.read_bytes() if self.path.exists() else b'')
      self._flushed = len(self._spool)
    else:
      self._file = open(self.path, 'ab')  # pylint: disable=consider-using-with

  def write(self, data: bytes) -> None:
    if self._remote:
      self._spool += data
    else:
      self._file.write(data)

  def flush(self) -> None:
    if self._remote:
      if len(self._spool) != self._flushed:
        self.path.write_bytes(bytes(self._spool))
        self._flushed = len(self._spool)
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if not self._remote:
      self._file.close()


@contextlib.contextmanager
def file_lock(path: PathLike) -> Iterator[bool]:
  """Holds an exclusive lock on the local file `path` (created) for the `with` block.

  Yields True when locked; on a remote path yields False and locks nothing (object stores
  have no locks): the caller must make sure one process writes there at a time.
  """
  path = as_path(path)
  if is_remote(path):
    yield False
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'a+') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
