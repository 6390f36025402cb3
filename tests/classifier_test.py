"""Tests of ebgan_jax.classifier: shapes, padding, checkpoints and a short training run."""

import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import classifier

NUM_TRAIN, NUM_TEST = 1024, 500  # small subsets of the embedded digits, to stay fast


@pytest.fixture(scope='module')
def digits():
  """((train images, labels), (test images, labels)) from the embedded 28x28 digits."""
  train_images, train_labels = classifier.read_idx_split(classifier.EMBEDDED_MNIST_DIR, 'train')
  test_images, test_labels = classifier.read_idx_split(classifier.EMBEDDED_MNIST_DIR, 'test')
  return ((train_images[:NUM_TRAIN], train_labels[:NUM_TRAIN]),
          (test_images[:NUM_TEST], test_labels[:NUM_TEST]))


@pytest.fixture(scope='module')
def trained(digits):
  """(variables, test accuracy) after a short training on the subset."""
  (train_images, train_labels), (test_images, test_labels) = digits
  return classifier.train_classifier(train_images, train_labels, test_images, test_labels,
                                     num_epochs=2, batch_size=32, seed=0)


def test_read_idx_split_scales_to_minus_one_one(digits):
  (images, labels), _ = digits
  chex.assert_shape((images, labels), ((NUM_TRAIN, 28, 28, 1), (NUM_TRAIN,)))
  assert images.min() == -1.0 and images.max() == 1.0  # pixel 0 -> -1, 255 -> 1
  assert set(np.unique(labels)) == set(range(10))


def test_to_classifier_input_pads_28_with_background():
  images = jnp.ones((2, 28, 28, 1))
  padded = classifier.to_classifier_input(images)
  chex.assert_shape(padded, (2, 32, 32, 1))
  chex.assert_trees_all_equal(padded[:, 2:30, 2:30], images)
  border = jnp.concatenate([padded[:, :2].ravel(), padded[:, 30:].ravel(),
                            padded[:, :, :2].ravel(), padded[:, :, 30:].ravel()])
  assert bool(jnp.all(border == -1.0))  # the 2-pixel frame is background
  with pytest.raises(ValueError, match='28x28 or 32x32'):
    classifier.to_classifier_input(jnp.zeros((1, 64, 64, 1)))


def test_output_shapes_for_28_and_32_inputs():
  params = classifier.init_params(jax.random.key(0))
  x28 = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1), minval=-1.0, maxval=1.0)
  x32 = jnp.pad(x28, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  probs28, probs32 = classifier.predict_probs(params, x28), classifier.predict_probs(params, x32)
  chex.assert_shape((probs28, probs32), ((3, 10), (3, 10)))
  chex.assert_trees_all_close(jnp.sum(probs28, axis=-1), jnp.ones(3), atol=1e-6)
  chex.assert_trees_all_close(probs28, probs32)  # a 28x28 digit is padded, then classified
  feats = classifier.features(params, x32)
  chex.assert_shape(feats, (3, classifier.FEATURE_DIM))


def test_jitted_chunked_apply_equals_one_network_pass_per_image():
  # 700 images: one full chunk of EVAL_BATCH and a padded one; each image's outputs are those
  # of the network applied to it alone (padding never leaks into real rows).
  params = classifier.init_params(jax.random.key(2))
  images = np.random.default_rng(0).uniform(-1, 1, (700, 28, 28, 1)).astype(np.float32)
  logits, feats = jax.jit(classifier.apply_in_chunks)(params, images)
  chex.assert_shape((logits, feats), ((700, 10), (700, classifier.FEATURE_DIM)))
  some = [0, 499, 500, 699]
  want_logits, want_feats = classifier.ConvNet().apply(
      params, classifier.to_classifier_input(images[some]))
  np.testing.assert_allclose(logits[np.array(some)], want_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats[np.array(some)], want_feats, rtol=1e-5, atol=1e-5)


def test_short_training_reaches_sanity_accuracy(trained, digits):
  params, test_accuracy = trained
  # 64 Adam steps on 1,024 digits; chance is 0.1. The full 8,000-digit run reaches ~0.97.
  assert test_accuracy > 0.8, test_accuracy
  print(f'short-run test accuracy: {test_accuracy:.3f}')
  _, (test_images, test_labels) = digits
  assert classifier.accuracy(params, test_images, test_labels) == pytest.approx(test_accuracy)


def test_save_load_round_trip(trained, tmp_path):
  params, test_accuracy = trained
  path = tmp_path / 'clf'
  classifier.save_classifier(path, params, {'test_accuracy': test_accuracy})
  restored, meta = classifier.load_classifier(path)
  chex.assert_trees_all_equal_shapes(restored, params)
  chex.assert_trees_all_close(restored, params)
  assert meta['test_accuracy'] == test_accuracy
  assert meta['input_size'] == 32
  # Saving again over an existing checkpoint replaces it.
  classifier.save_classifier(path, params, {'test_accuracy': 0.5})
  assert classifier.load_classifier(path)[1]['test_accuracy'] == 0.5


def test_load_places_params_on_this_process_device_whatever_they_were_saved_with(
    trained, tmp_path):
  """A classifier saved from params spread over 2 devices loads onto one local device.

  orbax would otherwise recreate the saved sharding, which fails on a machine with another
  topology (a classifier trained on a CPU, loaded on a GPU host: "topology mismatch").
  """
  params, _ = trained
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:2]), ('data',))
  spread = jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  classifier.save_classifier(tmp_path / 'clf', spread, {'test_accuracy': 0.9})
  restored, _ = classifier.load_classifier(tmp_path / 'clf')
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == local, leaf.sharding
  chex.assert_trees_all_close(restored, params)


def test_missing_checkpoint_names_the_training_command(tmp_path):
  with pytest.raises(classifier.ClassifierCheckpointError,
                     match='python -m ebgan_jax.classifier --out_dir='):
    classifier.load_classifier(tmp_path / 'nothing_here')


def test_broken_checkpoints_raise_clear_errors(trained, tmp_path):
  params, _ = trained
  path = tmp_path / 'clf'
  classifier.save_classifier(path, params, {})
  meta_path = path / classifier.META_FILE
  good_meta = meta_path.read_text()

  meta_path.write_text('{not json')
  with pytest.raises(classifier.ClassifierCheckpointError, match='Cannot read'):
    classifier.load_classifier(path)

  meta_path.write_text(json.dumps(dict(json.loads(good_meta), input_size=28)))
  with pytest.raises(classifier.ClassifierCheckpointError, match='input_size'):
    classifier.load_classifier(path)

  meta_path.write_text(good_meta)
  shutil.rmtree(path / classifier.PARAMS_SUBDIR)
  with pytest.raises(classifier.ClassifierCheckpointError,
                     match='Cannot restore .*python -m ebgan_jax.classifier'):
    classifier.load_classifier(path)
