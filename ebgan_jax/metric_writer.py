"""Scalars and image grids to TensorBoard (tf.summary) and a JSONL file; process 0 writes.

`tf.summary` is used directly (TensorFlow is already a dependency for tf.data) rather than
clu's writers, whose last release predates the installed JAX.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Mapping

import jax
import numpy as np
import tensorflow as tf


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, C] image (C = 1 or 3) as a PNG file."""
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  tf.io.write_file(str(path), tf.io.encode_png(image))


class MetricWriter:
  """Writes `train/...` scalars and sample grids under `logdir` (TensorBoard + metrics.jsonl)."""

  def __init__(self, logdir: str | os.PathLike):
    self.enabled = jax.process_index() == 0
    self.logdir = pathlib.Path(logdir)
    if self.enabled:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._summary = tf.summary.create_file_writer(str(self.logdir))
      self._jsonl = open(self.logdir / 'metrics.jsonl', 'a', encoding='utf-8')

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    with self._summary.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    self._jsonl.write(json.dumps({'step': step, **{k: float(v) for k, v in scalars.items()}})
                      + '\n')
    self._jsonl.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """One uint8 [H, W, C] image (e.g. a sample grid)."""
    if not self.enabled:
      return
    with self._summary.as_default(step=step):
      tf.summary.image(name, image[None], step=step)

  def flush(self) -> None:
    if self.enabled:
      self._summary.flush()

  def close(self) -> None:
    if self.enabled:
      self._summary.close()
      self._jsonl.close()
