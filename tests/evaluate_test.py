"""Scoring with the offline classifier: numbers against numpy/scipy, caching, the CLI path."""

import json

import chex
import jax
import numpy as np
import pytest
import scipy.spatial
import scipy.special

from configs import mnist_fc, mnist_grid
from ebgan_jax import classifier, data, evaluate, train


@pytest.fixture(scope='module')
def clf(tmp_path_factory):
  path = tmp_path_factory.mktemp('clf') / 'classifier'
  params = classifier.init_params(jax.random.key(1))
  classifier.save_classifier(path, params, {'test_accuracy': 0.5})
  return path, params


@pytest.mark.parametrize('num_images', [300, 120])  # 120: fewer than the reference's 300
def test_score_images_against_numpy_and_scipy(clf, num_images):
  _, params = clf
  rng = np.random.default_rng(0)
  ref_images = rng.uniform(-1, 1, (300, 32, 32, 1)).astype(np.float32)
  images = rng.uniform(-1, 1, size=(num_images, 32, 32, 1)).astype(np.float32)
  ref_feats = np.asarray(classifier.features(params, ref_images), np.float64)
  mu_r, sigma_r = ref_feats.mean(0), np.cov(ref_feats, rowvar=False)
  # As `reference_statistics` builds the test split's (fewer images than the 2,048 features).
  reference = evaluate.reference_from_images(params, ref_images)
  got = evaluate.score_images(params, images, reference)

  # Independent computation in float64 from the logits.
  logits = np.asarray(classifier.predict_logits(params, images), np.float64)
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  p = np.exp(log_p)
  marginal = p.mean(0)
  i_prime = np.mean(np.sum(marginal * (np.log(marginal) - log_p), axis=1))  # KL(p(y)||p(y|x))
  inception = np.exp(np.mean(np.sum(p * (log_p - np.log(marginal)), axis=1)))
  feats = np.asarray(classifier.features(params, images), np.float64)
  mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
  # tr sqrt(S S_r) without a matrix square root: with S = A^T A / (n - 1) and
  # S_r = B^T B / (n_r - 1) (A, B the centred features), the non-zero eigenvalues of S S_r are
  # the squared singular values of A B^T / sqrt((n - 1)(n_r - 1)), so the trace is their sum.
  a, b = feats - mu, ref_feats - mu_r
  tr_sqrt = np.sum(np.linalg.svd(a @ b.T, compute_uv=False)) / np.sqrt(
      (len(a) - 1) * (len(b) - 1))
  fid = np.sum((mu - mu_r) ** 2) + np.trace(sigma) + np.trace(sigma_r) - 2 * tr_sqrt
  np.testing.assert_allclose(got['i_prime'], i_prime, rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(got['inception_score'], inception, rtol=1e-3)
  # 300 (or 120) images, 2,048 features: both covariances are rank-deficient. The factor of
  # the side with fewer images comes from its features (the reference's, or at 120 the
  # generated images'), so no square root of a rank-deficient matrix is taken and float32
  # holds ~1e-5 of tr S + tr S_r (`scores.frechet_distance`; measured 4e-7 here, against
  # 6e-4 when the reference's sigma is rooted instead).
  np.testing.assert_allclose(got['classifier_fid'], fid,
                             atol=1e-5 * (np.trace(sigma) + np.trace(sigma_r)))
  # KID: the unbiased MMD^2 of the cubic kernel, by its definition.
  kernel = lambda x, y: (x @ y.T / x.shape[1] + 1.0) ** 3
  kxx, kyy = kernel(feats, feats), kernel(ref_feats, ref_feats)
  n, m = len(feats), len(ref_feats)
  kid = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
         - 2 * kernel(feats, ref_feats).mean())
  np.testing.assert_allclose(got['kid'], kid, rtol=1e-3, atol=1e-3 * abs(kxx).mean())
  # Precision / recall (k = 3): balls to each sample's 3rd nearest neighbour in its own set
  # (column 0 of the sorted distances is the sample itself). Float32 against float64 may put
  # one sample on the other side of a ball's edge.
  radius = lambda x: np.sort(scipy.spatial.distance.cdist(x, x), axis=1)[:, 3]
  inside = lambda x, y: np.mean(np.any(
      scipy.spatial.distance.cdist(x, y) <= radius(y)[None, :], axis=1))
  assert abs(got['precision'] - inside(feats, ref_feats)) <= 1 / len(feats)
  assert abs(got['recall'] - inside(ref_feats, feats)) <= 1 / len(ref_feats)
  assert got['class_histogram'] == np.bincount(p.argmax(1), minlength=10).tolist()
  # modes: classes with at least N / (10 K) = N / 100 samples (3 for 300, 1 for 120).
  assert got['modes_covered'] == int(np.sum(np.bincount(p.argmax(1), minlength=10)
                                            >= max(1, num_images // 100)))


def test_uint8_images_and_non_finite_images(clf):
  _, params = clf
  dim = classifier.FEATURE_DIM
  reference = evaluate.Reference(np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32), 1)
  as_uint8 = np.full((4, 32, 32, 1), 255, np.uint8)
  as_float = np.ones((4, 32, 32, 1), np.float32)
  a = evaluate.score_images(params, as_uint8, reference)
  b = evaluate.score_images(params, as_float, reference)
  assert a['class_histogram'] == b['class_histogram']
  chex.assert_trees_all_close(a['i_prime'], b['i_prime'])
  nan = evaluate.score_images(params, np.full((4, 32, 32, 1), np.nan, np.float32), reference)
  assert np.isnan(nan['i_prime']) and nan['modes_covered'] == 0


def test_get_classifier_trains_once_then_loads(tmp_path, tfds_data_dir, monkeypatch, capsys):
  config = mnist_grid.get_config('smoke')
  config.tfds_data_dir = tfds_data_dir
  config.eval.classifier_train_examples = 64
  config.eval.classifier_batch_size = 32
  path = tmp_path / 'classifier-mnist_10k'
  params, meta = evaluate.get_classifier(config, path)
  assert meta['num_train'] == 64 and meta['num_test'] == 2000
  # The reported accuracy is the saved classifier's on the whole test split, counted here.
  test_images, test_labels = data.split_arrays(config, 'test')
  predicted = np.argmax(np.asarray(classifier.predict_logits(params, test_images)), axis=1)
  assert meta['test_accuracy'] == pytest.approx(np.mean(predicted == test_labels), abs=1e-6)
  assert 'test accuracy' in capsys.readouterr().out
  def fail(*args, **kwargs):
    raise AssertionError('the cached classifier must be reused')
  monkeypatch.setattr(classifier, 'train_classifier', fail)
  _, again = evaluate.get_classifier(config, path)
  assert again['test_accuracy'] == meta['test_accuracy']


def test_evaluate_workdir_writes_json_and_tensorboard(tmp_path, tfds_data_dir, clf):
  config = mnist_fc.get_config('ebgan')
  config.tfds_data_dir = tfds_data_dir
  config.model.n_layer_g, config.model.size_g, config.model.size_d = 2, 16, 8
  config.model.latent_dim = 8
  config.batch_size, config.total_steps = 16, 2
  config.eval_every_steps = 0
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  result = evaluate.evaluate_workdir(workdir, classifier_dir=clf[0], num_samples=40)
  saved = json.loads((workdir / evaluate.EVAL_FILE).read_text())
  assert saved['step'] == 2 and saved['num_samples'] == 40
  assert saved['classifier_test_accuracy'] == 0.5
  assert sum(saved['class_histogram']) == 40
  assert saved['i_prime'] == pytest.approx(result['i_prime'])
  lines = [json.loads(l) for l in (workdir / 'logs' / 'metrics.jsonl').read_text().splitlines()]
  assert any('eval/i_prime' in l and l['step'] == 2 for l in lines)
  assert list((workdir / 'logs').glob('events.out.tfevents.*'))
