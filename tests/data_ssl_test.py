"""Tests for ebgan_jax/data/ssl.py."""

import numpy as np
import pytest

from ebgan_jax.data import ssl as ssl_data


def _labels(per_class: int = 50, seed: int = 0) -> np.ndarray:
  """Shuffled labels with `per_class` examples of each digit."""
  labels = np.repeat(np.arange(10), per_class)
  np.random.default_rng(seed).shuffle(labels)
  return labels


@pytest.mark.parametrize('num_labelled', [100, 200])
def test_subset_is_balanced_and_without_repeats(num_labelled):
  labels = _labels(per_class=30)
  idx = ssl_data.balanced_labelled_subset(labels, num_labelled, seed=3)
  assert idx.shape == (num_labelled,)
  assert len(np.unique(idx)) == num_labelled
  assert np.all(np.diff(idx) > 0)  # sorted
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=10),
                                [num_labelled // 10] * 10)


def test_subset_is_deterministic_per_seed_and_differs_across_seeds():
  labels = _labels()
  first = ssl_data.balanced_labelled_subset(labels, 100, seed=7)
  again = ssl_data.balanced_labelled_subset(labels, 100, seed=7)
  np.testing.assert_array_equal(first, again)
  others = [ssl_data.balanced_labelled_subset(labels, 100, seed=s) for s in range(3)]
  assert all(not np.array_equal(first, o) for o in others)


def test_whole_classes_when_every_example_is_needed():
  labels = _labels(per_class=4)
  idx = ssl_data.balanced_labelled_subset(labels, 40, seed=0)
  np.testing.assert_array_equal(idx, np.arange(40))


def test_rejects_a_count_not_divisible_by_the_classes():
  with pytest.raises(ValueError, match='multiple of num_classes'):
    ssl_data.balanced_labelled_subset(_labels(), 105, seed=0)


def test_rejects_a_class_with_too_few_examples():
  labels = _labels(per_class=20)
  labels = np.concatenate([labels[labels != 3], np.full(5, 3)])  # only 5 threes
  with pytest.raises(ValueError, match='Class 3 has 5 examples'):
    ssl_data.balanced_labelled_subset(labels, 100, seed=0)


def test_stream_indices_cycle_a_small_labelled_set_deterministically():
  first = ssl_data.stream_indices(10, 4, step=2, seed=(0, 0))  # positions 8..11: epochs 0, 1
  again = ssl_data.stream_indices(10, 4, step=2, seed=(0, 0))
  np.testing.assert_array_equal(first, again)
  epoch0 = np.random.default_rng([0, 0, 0]).permutation(10)
  epoch1 = np.random.default_rng([0, 0, 1]).permutation(10)
  np.testing.assert_array_equal(first, [epoch0[8], epoch0[9], epoch1[0], epoch1[1]])
  # Every epoch of a batch-aligned stream is a permutation.
  batches = [ssl_data.stream_indices(12, 4, s, 3) for s in range(3)]
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(12))


def test_stream_indices_of_many_steps_at_once_are_the_steps_batches():
  # 7 steps of 4 from a set of 10: 2.8 epochs, batches straddling epochs 0|1 and 1|2.
  stacked = ssl_data.stream_indices(10, 4, step=1, seed=(5, 1), num_steps=7)
  assert stacked.shape == (7, 4)
  for k in range(7):
    np.testing.assert_array_equal(stacked[k], ssl_data.stream_indices(10, 4, 1 + k, (5, 1)))
