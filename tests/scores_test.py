"""Tests of ebgan_jax.scores against hand-worked values and independent numpy/scipy code."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from ebgan_jax import scores


def _dirichlet_probs(n: int, k: int, seed: int) -> np.ndarray:
  """Fixed random p(y|x) rows, all entries well above the log floor."""
  return np.random.default_rng(seed).dirichlet(np.ones(k), size=n).astype(np.float32)


# --- Modified inception score I' (App. C) and IS (Salimans et al., 2016) ---------------------


def test_modified_inception_score_matches_scipy_kl():
  probs = _dirichlet_probs(n=50, k=10, seed=0)
  marginal = probs.astype(np.float64).mean(axis=0)
  # scipy.stats.entropy(p, q) = KL(p || q); App. C puts p(y) first.
  expected = np.mean([scipy.stats.entropy(marginal, row) for row in probs.astype(np.float64)])
  got = scores.modified_inception_score(jnp.asarray(probs))
  chex.assert_shape(got, ())
  chex.assert_trees_all_close(got, expected, rtol=1e-5)


def test_inception_score_matches_scipy_kl():
  probs = _dirichlet_probs(n=50, k=10, seed=1)
  marginal = probs.astype(np.float64).mean(axis=0)
  expected = math.exp(np.mean([scipy.stats.entropy(row, marginal)
                               for row in probs.astype(np.float64)]))
  chex.assert_trees_all_close(scores.inception_score(jnp.asarray(probs)), expected, rtol=1e-5)


def test_log_probs_path_agrees_when_floor_is_inactive():
  logits = np.random.default_rng(2).normal(size=(40, 10)).astype(np.float32)
  probs, log_probs = jax.nn.softmax(logits), jax.nn.log_softmax(logits)
  chex.assert_trees_all_close(scores.modified_inception_score(probs, log_probs),
                              scores.modified_inception_score(probs), rtol=1e-5)
  chex.assert_trees_all_close(scores.inception_score(probs, log_probs),
                              scores.inception_score(probs), rtol=1e-5)


def test_uniform_predictions_score_zero_and_one():
  # p(y|x) = 1/10 for every x, so p(y) = p(y|x): every KL is 0, I' = 0 and IS = exp(0) = 1.
  probs = jnp.full((8, 10), 0.1)
  chex.assert_trees_all_close(scores.modified_inception_score(probs), 0.0, atol=1e-6)
  chex.assert_trees_all_close(scores.inception_score(probs), 1.0, atol=1e-6)


def test_one_hot_diverse_predictions():
  probs = jnp.eye(10)  # sample i is class i with certainty; p(y) = 1/10 each.
  # IS: KL(onehot_i || uniform) = 1 * log(1 / 0.1) = log 10 for every i, so IS = exp(log 10) = 10.
  chex.assert_trees_all_close(scores.inception_score(probs), 10.0, rtol=1e-5)
  # I': KL(uniform || max(onehot_i, eps)) = sum_y 0.1 (log 0.1 - log q_y)
  #   = log 0.1 - 0.1 * (9 log eps + log 1) = -2.302585 + 0.9 * 27.631021 = 22.565334.
  chex.assert_trees_all_close(scores.modified_inception_score(probs), 22.565334, rtol=1e-5)
  # Without the floor log q_y = -inf for 9 classes: the exact I' is infinite.
  assert scores.modified_inception_score(probs, jnp.log(probs)) == jnp.inf


def test_two_class_soft_predictions_by_hand():
  probs = jnp.array([[0.75, 0.25], [0.25, 0.75]])  # p(y) = (0.5, 0.5)
  # I': each row KL((.5,.5) || (.75,.25)) = .5 log(.5/.75) + .5 log(.5/.25) = .5 log(4/3).
  chex.assert_trees_all_close(scores.modified_inception_score(probs), 0.5 * math.log(4 / 3),
                              rtol=1e-5)
  # IS: each row KL((.75,.25) || (.5,.5)) = .75 log 1.5 + .25 log .5, so IS = 1.5^.75 * .5^.25.
  chex.assert_trees_all_close(scores.inception_score(probs), 1.5**0.75 * 0.5**0.25, rtol=1e-5)


def test_collapsed_generator_scores_zero_and_one():
  # Mode collapse: every sample is a confident "3". p(y) = p(y|x), so I' = 0 and IS = 1;
  # the 0 log 0 terms of the other classes count as 0.
  probs = jnp.tile(jax.nn.one_hot(3, 10), (6, 1))
  chex.assert_trees_all_close(scores.modified_inception_score(probs), 0.0, atol=1e-6)
  chex.assert_trees_all_close(scores.inception_score(probs), 1.0, atol=1e-6)


def test_scores_stay_finite_when_softmax_underflows():
  logits = jnp.array([[0.0, -200.0, -200.0], [-200.0, 0.0, -200.0]])  # probs exactly one-hot
  probs, log_probs = jax.nn.softmax(logits), jax.nn.log_softmax(logits)
  chex.assert_tree_all_finite(scores.modified_inception_score(probs))
  exact = scores.modified_inception_score(probs, log_probs)
  # Exact: KL((.5,.5,0) || row 0) = .5 (log .5 - 0) + .5 (log .5 + 200) = 100 + log .5.
  chex.assert_trees_all_close(exact, 100.0 + math.log(0.5), rtol=1e-5)


def test_jitted_scores_match_scipy_kl():
  probs = _dirichlet_probs(n=16, k=10, seed=3)
  rows = probs.astype(np.float64)
  marginal = rows.mean(axis=0)
  i_prime = np.mean([scipy.stats.entropy(marginal, row) for row in rows])  # KL(p(y) || p(y|x))
  inception = math.exp(np.mean([scipy.stats.entropy(row, marginal) for row in rows]))
  chex.assert_trees_all_close(jax.jit(scores.modified_inception_score)(jnp.asarray(probs)),
                              i_prime, rtol=1e-5)
  chex.assert_trees_all_close(jax.jit(scores.inception_score)(jnp.asarray(probs)), inception,
                              rtol=1e-5)


# --- Frechet distance ------------------------------------------------------------------------


def _scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
  """The reference FID formula in float64 with a general matrix square root."""
  mu1, sigma1, mu2, sigma2 = (np.asarray(a, np.float64) for a in (mu1, sigma1, mu2, sigma2))
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_feature_statistics_match_numpy():
  feats = np.random.default_rng(4).normal(size=(200, 6)).astype(np.float32)
  mu, sigma = scores.feature_statistics(jnp.asarray(feats))
  chex.assert_shape((mu, sigma), ((6,), (6, 6)))
  chex.assert_trees_all_close(mu, feats.mean(axis=0), atol=1e-6)
  chex.assert_trees_all_close(sigma, np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-6)


def test_frechet_distance_diagonal_by_hand():
  mu1, mu2 = jnp.array([0.0, 0.0]), jnp.array([3.0, 4.0])
  sigma1, sigma2 = jnp.diag(jnp.array([1.0, 4.0])), jnp.diag(jnp.array([4.0, 9.0]))
  # Diagonal: tr sqrt(S1 S2) = sqrt(1*4) + sqrt(4*9) = 8, so
  # d^2 = (9 + 16) + (1 + 4) + (4 + 9) - 2 * 8 = 25 + 2 = 27.
  chex.assert_trees_all_close(scores.frechet_distance(mu1, sigma1, mu2, sigma2), 27.0, rtol=1e-6)


@pytest.mark.parametrize('n1,n2,dim', [(300, 400, 16), (40, 30, 64)])
def test_frechet_distance_matches_scipy_sqrtm(n1, n2, dim):
  rng = np.random.default_rng(dim)
  mixing = rng.normal(size=(dim, dim))  # correlated, non-commuting covariances
  feats1 = rng.normal(size=(n1, dim)) @ mixing
  feats2 = 0.5 + rng.normal(size=(n2, dim)) @ (mixing + 0.3 * rng.normal(size=(dim, dim)))
  mu1, sigma1 = feats1.mean(axis=0), np.cov(feats1, rowvar=False)  # rank-deficient if n < dim
  mu2, sigma2 = feats2.mean(axis=0), np.cov(feats2, rowvar=False)
  expected = _scipy_frechet(mu1, sigma1, mu2, sigma2)
  got = scores.frechet_distance(*(jnp.asarray(a, jnp.float32) for a in (mu1, sigma1, mu2, sigma2)))
  # float32 (see frechet_distance's docstring): ~1e-5 of the traces when n >> dim, ~1e-3 when
  # the covariances are rank-deficient (measured 7e-4 * 2885 = 2.0 of 2885 for n = 40, 30).
  tolerance = 1e-4 if min(n1, n2) > dim else 2e-3
  scale = np.trace(sigma1) + np.trace(sigma2)
  np.testing.assert_allclose(float(got), expected, atol=tolerance * scale)


@pytest.mark.parametrize('n1,n2,dim', [(300, 400, 16), (40, 30, 64), (300, 30, 64)])
def test_frechet_distance_with_a_factor_of_the_second_side_matches_scipy(n1, n2, dim):
  rng = np.random.default_rng(dim + n2)
  mixing = rng.normal(size=(dim, dim))
  feats1 = rng.normal(size=(n1, dim)) @ mixing
  feats2 = 0.5 + rng.normal(size=(n2, dim)) @ (mixing + 0.3 * rng.normal(size=(dim, dim)))
  mu1, sigma1 = feats1.mean(axis=0), np.cov(feats1, rowvar=False)
  mu2, sigma2 = feats2.mean(axis=0), np.cov(feats2, rowvar=False)
  expected = _scipy_frechet(mu1, sigma1, mu2, sigma2)
  args = [jnp.asarray(a, jnp.float32) for a in (mu1, sigma1, mu2, sigma2)]
  from_features = scores.covariance_factor(args[3], jnp.asarray(feats2, jnp.float32))
  from_sigma = scores.covariance_factor(args[3])
  # A factor L has L^T L = sigma2; from the features of a rank-deficient sigma2 it is
  # [n2, dim] (the centred features), else the [dim, dim] square root.
  assert from_features.shape == ((n2, dim) if n2 <= dim else (dim, dim))
  for factor in (from_features, from_sigma):
    np.testing.assert_allclose(np.asarray(factor, np.float64).T @ np.asarray(factor, np.float64),
                               sigma2, atol=1e-4 * np.abs(sigma2).max())
  scale = np.trace(sigma1) + np.trace(sigma2)
  got = jax.jit(scores.frechet_distance)(*args, factor2=from_features)
  # No square root of a rank-deficient matrix is taken (S1 is not rooted, and L comes from
  # the features when S2 is rank-deficient): the tolerance of full-rank inputs holds for all
  # three cases (measured 9e-6, 3e-6, 6e-8 of the traces).
  np.testing.assert_allclose(float(got), expected, atol=1e-4 * scale)
  got = scores.frechet_distance(*args, factor2=from_sigma)
  tolerance = 1e-4 if min(n1, n2) > dim else 2e-3  # Rooting a rank-deficient sigma2 loses more.
  np.testing.assert_allclose(float(got), expected, atol=tolerance * scale)


def test_frechet_distance_of_identical_statistics_is_near_zero():
  feats = jnp.asarray(np.random.default_rng(5).normal(size=(500, 32)), jnp.float32)
  mu, sigma = scores.feature_statistics(feats)
  got = jax.jit(scores.frechet_distance)(mu, sigma, mu, sigma)
  assert 0.0 <= float(got) < 1e-4 * float(2 * jnp.trace(sigma))


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='Mismatched'):
    scores.frechet_distance(jnp.zeros(3), jnp.eye(3), jnp.zeros(4), jnp.eye(4))
  with pytest.raises(ValueError, match='factor2'):
    scores.frechet_distance(jnp.zeros(3), jnp.eye(3), jnp.zeros(3), jnp.eye(3),
                            factor2=jnp.eye(4))


# --- Mode coverage ---------------------------------------------------------------------------


def test_class_histogram_from_probs_and_labels():
  labels = jnp.array([0, 0, 3, 3, 3, 9])
  expected = np.array([2, 0, 0, 3, 0, 0, 0, 0, 0, 1])
  chex.assert_trees_all_equal(scores.class_histogram(labels, 10), expected)
  probs = 0.9 * jax.nn.one_hot(labels, 10) + 0.01  # argmax = label
  chex.assert_trees_all_equal(scores.class_histogram(probs, 10), expected)
  histogram = scores.class_histogram(labels, 10)
  assert int(scores.modes_covered(histogram)) == 3
  assert int(scores.modes_covered(histogram, min_count=2)) == 2  # classes 0 and 3


# -- KID and precision / recall ------------------------------------------------------------------

def _numpy_kid(x: np.ndarray, y: np.ndarray) -> float:
  """Bińkowski et al.'s unbiased MMD^2, cubic kernel, written out in float64 with loops over
  the off-diagonal pairs' sums."""
  d = x.shape[1]
  kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  n, m = len(x), len(y)
  off_xx = sum(kxx[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  off_yy = sum(kyy[i, j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  return off_xx + off_yy - 2.0 * kxy.mean()


def test_kid_against_numpy_and_its_blocks():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(70, 12))
  y = rng.normal(0.2, 1.3, size=(50, 12))
  got = scores.kernel_inception_distance(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  np.testing.assert_allclose(float(got), _numpy_kid(x, y), rtol=1e-4)
  # More rows than one block (1,024): the blocked sums are the same sums.
  big_x, big_y = rng.normal(size=(1500, 4)), rng.normal(0.5, 1.0, size=(1100, 4))
  d = 4
  kxx = (big_x @ big_x.T / d + 1) ** 3
  kyy = (big_y @ big_y.T / d + 1) ** 3
  expected = ((kxx.sum() - np.trace(kxx)) / (1500 * 1499) + (kyy.sum() - np.trace(kyy))
              / (1100 * 1099) - 2 * ((big_x @ big_y.T / d + 1) ** 3).mean())
  got = scores.kernel_inception_distance(jnp.asarray(big_x, jnp.float32),
                                         jnp.asarray(big_y, jnp.float32))
  np.testing.assert_allclose(float(got), expected, rtol=2e-3)


def test_kid_is_unbiased_where_the_frechet_distance_is_not():
  """Two samples of one Gaussian: KID averages to 0 at any size; FID stays positive and
  grows as the samples shrink relative to the dimension."""
  rng = np.random.default_rng(1)
  kids, fids = [], []
  for _ in range(20):
    a, b = rng.normal(size=(40, 16)), rng.normal(size=(40, 16))
    kids.append(float(scores.kernel_inception_distance(jnp.asarray(a, jnp.float32),
                                                       jnp.asarray(b, jnp.float32))))
    fids.append(float(scores.frechet_distance(*scores.feature_statistics(jnp.asarray(a)),
                                              *scores.feature_statistics(jnp.asarray(b)))))
  # By hand: each KID estimate has mean 0; its spread here is ~0.1.
  assert abs(np.mean(kids)) < 3 * np.std(kids) / np.sqrt(len(kids))
  assert min(fids) > 1.0


def _numpy_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3):
  """Kynkäänniemi et al. by brute force: k-th neighbour radii by sorting all distances."""
  from scipy.spatial.distance import cdist  # pylint: disable=g-import-not-at-top
  real_radii = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the point itself
  fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
  precision = np.mean((cdist(fake, real) <= real_radii[None, :]).any(axis=1))
  recall = np.mean((cdist(real, fake) <= fake_radii[None, :]).any(axis=1))
  return precision, recall


def test_precision_recall_against_brute_force():
  rng = np.random.default_rng(2)
  real, fake = rng.normal(size=(200, 8)), rng.normal(0.4, 0.8, size=(150, 8))
  got = scores.precision_recall(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
  np.testing.assert_allclose([float(v) for v in got], _numpy_precision_recall(real, fake),
                             atol=1 / 150)  # at most one borderline sample


def test_a_generator_that_drops_a_mode_keeps_its_precision_and_loses_recall():
  """Real data: two well-separated clusters of 100 points; the fake samples cover one."""
  rng = np.random.default_rng(3)
  cluster = lambda centre, n: rng.normal(size=(n, 2)) * 0.1 + centre
  real = np.concatenate([cluster(0.0, 100), cluster(10.0, 100)])
  fake = cluster(0.0, 100)
  precision, recall = scores.precision_recall(jnp.asarray(real, jnp.float32),
                                              jnp.asarray(fake, jnp.float32))
  assert float(precision) > 0.9
  assert 0.4 < float(recall) < 0.6  # by construction: about half the real points covered
  same = scores.precision_recall(jnp.asarray(real, jnp.float32), jnp.asarray(real, jnp.float32))
  assert [float(v) for v in same] == [1.0, 1.0]
