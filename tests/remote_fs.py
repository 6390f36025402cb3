"""A mocked remote file system for tests: `gs://BUCKET/PATH` lives in `ROOT/BUCKET/PATH`.

`fake_gcs(root)` redirects the three ways the project reaches gs:// files:
- `etils.epath` (every path of the project, and orbax's folder operations), through
  `epath.testing.mock_epath`, which swaps epath's backends for one whose functions we wrap.
  epath would pick TensorFlow's gfile for gs:// where TensorFlow is installed, bypassing the
  mocked backends, so `gpath._is_tf_installed` is patched to say it is not;
- tensorstore, which orbax hands a GCS kvstore spec for array data: the spec of a local
  folder instead (orbax's own GCS logic, commit files instead of renames, stays in force);
- orbax's check for hierarchical-namespace buckets (a GCS API call): "no".
Nothing outside `root` is written for a gs:// path; other paths are left alone.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Iterator
from unittest import mock

from etils.epath import gpath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

PREFIX = 'gs://'


@contextlib.contextmanager
def fake_gcs(root: pathlib.Path) -> Iterator[None]:
  root = pathlib.Path(root)

  def local(path) -> str:
    path = os.fspath(path)
    return str(root / path[len(PREFIX):]) if path.startswith(PREFIX) else path

  def remote(path: str, was_remote: bool) -> str:
    if not was_remote:
      return path
    return PREFIX + str(pathlib.Path(path).relative_to(root))

  def one_path(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def two_paths(fn, path, dst, *args, **kwargs):
    return fn(local(path), local(dst), *args, **kwargs)

  def glob(fn, pattern):
    was_remote = os.fspath(pattern).startswith(PREFIX)
    return [remote(p, was_remote) for p in fn(local(pattern))]

  def walk(fn, top, *args, **kwargs):
    was_remote = os.fspath(top).startswith(PREFIX)
    for dirpath, dirnames, filenames in fn(local(top), *args, **kwargs):
      yield remote(dirpath, was_remote), dirnames, filenames

  def kvstore(ckpt_path: str) -> dict:
    return {'driver': 'file', 'path': local(ckpt_path)}

  with contextlib.ExitStack() as stack:
    stack.enter_context(epath_testing.mock_epath(
        open=one_path, exists=one_path, isdir=one_path, listdir=one_path,
        makedirs=one_path, mkdir=one_path, remove=one_path, rmtree=one_path, stat=one_path,
        rename=two_paths, replace=two_paths, copy=two_paths, glob=glob, walk=walk))
    stack.enter_context(mock.patch.object(gpath, '_is_tf_installed', lambda: False))
    stack.enter_context(mock.patch.object(gcs_utils, 'get_kvstore_for_gcs', kvstore))
    stack.enter_context(mock.patch.object(gcs_utils, 'is_hierarchical_namespace_enabled',
                                          lambda path: False))
    yield


def exists(root: pathlib.Path, url: str) -> bool:
  """Whether the fake object `url` (gs://...) exists under `root`."""
  return (pathlib.Path(root) / url[len(PREFIX):]).exists()


