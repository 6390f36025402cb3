"""Labelled subsets and batch order for semi-supervised PI-MNIST (Sec. 4.2, App. D).

Table 2 trains with 100, 200 and 1000 labels and averages over 15 random seeds. The paper does
not say how the labelled examples are drawn; we balance them across the classes (10, 20 or 100
per digit) as Rasmus et al.'s code does (run.py, `balanced_classes=True`), which also uses every
training image, labelled or not, as an unlabelled one.
Pure numpy.
"""

from __future__ import annotations

import numpy as np


def balanced_labelled_subset(labels: np.ndarray, num_labelled: int, seed: int,
                             num_classes: int = 10) -> np.ndarray:
  """Indices of `num_labelled` examples, `num_labelled / num_classes` from each class.

  Deterministic for a given seed; different seeds give different subsets (Table 2's 15 runs).

  Args:
    labels: integer class labels of the training set, shape [N], values in [0, num_classes).
    num_labelled: size of the subset; a multiple of `num_classes`.
    seed: seeds the choice.
    num_classes: number of classes (10 for MNIST).
  Returns:
    Sorted int64 indices into `labels`, shape [num_labelled], without repeats.
  Raises:
    ValueError: if `num_labelled` is not a positive multiple of `num_classes`, or a class has
      fewer than `num_labelled / num_classes` examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must have shape [N], got {labels.shape}.')
  if num_labelled <= 0 or num_labelled % num_classes:
    raise ValueError(f'num_labelled={num_labelled} must be a positive multiple of '
                     f'num_classes={num_classes} so that every class gets the same number.')
  per_class = num_labelled // num_classes
  rng = np.random.default_rng(seed)
  chosen = []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    if members.size < per_class:
      raise ValueError(f'Class {c} has {members.size} examples, fewer than the {per_class} '
                       f'needed for {num_labelled} balanced labels.')
    chosen.append(rng.choice(members, size=per_class, replace=False))
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def stream_indices(num_examples: int, batch_size: int, step: int,
                   seed: int | tuple[int, ...], num_steps: int | None = None) -> np.ndarray:
  """Indices of the `step`-th batch of an endless stream of shuffled passes over the data.

  The stream concatenates independent permutations of range(num_examples), one per epoch
  (seeded by (seed, epoch)), and cuts it into consecutive batches; a batch may straddle two
  epochs, so a labelled set smaller than the batch is cycled (as Rasmus et al.'s code cycles
  its labelled examples). A pure function of its arguments: a resumed run sees the same
  batches.

  Args:
    num_examples: N, the size of the set.
    batch_size: B.
    step: the 0-based batch number.
    seed: an int or a tuple of ints (e.g. (run seed, stream id)).
    num_steps: K: the batches of steps `step` .. `step + K - 1` at once, stacked (each epoch's
      permutation drawn once for all of them); None: the one batch of `step`.
  Returns:
    int64 indices, shape [B] (or [K, B] with `num_steps`), values in [0, N).
  """
  if num_examples <= 0 or batch_size <= 0:
    raise ValueError(f'num_examples={num_examples} and batch_size={batch_size} must be > 0.')
  seed = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
  count = batch_size * (num_steps or 1)
  positions = step * batch_size + np.arange(count, dtype=np.int64)  # in the stream
  epochs, offsets = np.divmod(positions, num_examples)
  out = np.empty(count, np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([*seed, int(epoch)]).permutation(num_examples)
    mask = epochs == epoch
    out[mask] = perm[offsets[mask]]
  return out if num_steps is None else out.reshape(num_steps, batch_size)
