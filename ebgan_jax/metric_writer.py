"""Scalars and image grids to TensorBoard and to metrics.jsonl; process 0 writes.

No TensorFlow. The event files hold TensorBoard's own protocol buffers
(`tensorboard.compat.proto`) framed by TensorBoard's record writer
(`tensorboard.summary.writer.record_writer`): the pieces PyTorch's `SummaryWriter` is built on,
from the `tensorboard` package, maintained by the TensorBoard team and needed anyway to view
the logs. tensorboardX would add a dependency for the same pieces; the writers of clu and
flax import TensorFlow. Files go through `ebgan_jax.paths`, so a remote logdir (gs://...)
works; PNGs are encoded with Pillow (which matplotlib depends on).
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from typing import Mapping

import jax
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import record_writer

from ebgan_jax import paths


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 image [H, W, C], C = 1 (grey) or 3 (RGB)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'Expected a uint8 image [H, W, 1 or 3], got {image.dtype} {image.shape}.')
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='PNG')
  return buffer.getvalue()


def write_png(path: paths.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, C] image (C = 1 or 3) as a PNG file (local or remote)."""
  paths.write_atomic(path, encode_png(image))


class MetricWriter:
  """Writes `train/...` scalars and sample grids under `logdir` (TensorBoard + metrics.jsonl).

  Every flush makes what was written durable (on a remote logdir, the objects are rewritten:
  see `paths.AppendLog`). Scalars are flushed as they are written; images at the next scalar
  write or at `flush`/`close`.
  """

  def __init__(self, logdir: paths.PathLike):
    self.enabled = jax.process_index() == 0
    self.logdir = paths.as_path(logdir)
    if not self.enabled:
      return
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.ebgan_jax')
    self._events = record_writer.RecordWriter(paths.AppendLog(self.logdir / name))
    self._write_event(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    self._jsonl = paths.AppendLog(self.logdir / 'metrics.jsonl')

  def _write_event(self, event: event_pb2.Event) -> None:
    self._events.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = [summary_pb2.Summary.Value(tag=name, simple_value=float(value))
              for name, value in scalars.items()]
    self._write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=summary_pb2.Summary(value=values)))
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write((json.dumps(row) + '\n').encode())
    self.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """One uint8 [H, W, C] image (e.g. a sample grid)."""
    if not self.enabled:
      return
    h, w, c = image.shape
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=name, image=summary_pb2.Summary.Image(height=h, width=w, colorspace=c,
                                                   encoded_image_string=encode_png(image)))])
    self._write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    if self.enabled:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._events.close()
      self._jsonl.close()
