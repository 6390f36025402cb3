"""Sample-quality scores: App. C's modified inception score I', IS, FID and mode coverage.

Pure functions of arrays (jax.numpy), so they can run under `jax.jit` next to the generator.
`probs` are the offline classifier's p(y|x) for N generated samples, shape [N, K]; see
`ebgan_jax.classifier` for the classifier itself.

Numerics. float32 (JAX's default); float64 inputs stay float64 under `jax_enable_x64`.
- Logarithms of probabilities floor them at `eps` (`LOG_EPS` = 1e-12, log = -27.63). A softmax
  underflows to exactly 0 once a logit trails the largest by more than ~87 (float32), and
  I' = E_x KL(p(y) || p(y|x)) takes log p(y|x) of *every* class, so without a floor one
  confident sample makes I' infinite. Pass `log_probs` (the classifier's log-softmax) to skip
  the floor and get the exact value. Terms with p = 0 in front of the log count as 0
  (0 log 0 = 0), as in `scipy.stats.entropy`.
- The Frechet distance takes tr sqrt(S1 S2) from symmetric eigendecompositions only (no
  general `sqrtm`, which in JAX is CPU-only and complex-valued), with matmuls at
  `Precision.HIGHEST` so that GPUs/TPUs do not drop to bf16/tf32 passes. When one side is
  fixed (a grid scores every run against the same test split), pass its `covariance_factor`,
  computed once: each distance then needs one `eigvalsh` instead of an `eigh` and an
  `eigvalsh` (F = 2,048 on the 2-core CPU: 0.6 s instead of 1.25 s).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor applied to probabilities before taking their log (see the module docstring).
LOG_EPS = 1e-12
# The scores that are distances to the real data (lower is better); I', IS, precision,
# recall and modes covered are better higher.
DISTANCES = ('classifier_fid', 'fid', 'kid')

_HIGHEST = jax.lax.Precision.HIGHEST


def lower_is_better(metric: str) -> bool:
  """Whether a smaller `metric` ('eval/classifier_fid', 'kid', ...) is a better one."""
  return metric.split('/')[-1] in DISTANCES


def _at_least_float32(x: jax.Array) -> jax.Array:
  """float32, or float64 when given float64 under `jax_enable_x64`."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _log(p: jax.Array, eps: float) -> jax.Array:
  return jnp.log(jnp.clip(p, eps, 1.0))


def _xlogy_ratio(p: jax.Array, log_p: jax.Array, log_q: jax.Array) -> jax.Array:
  """Elementwise p * (log p - log q), with 0 where p == 0 (0 log 0 = 0)."""
  return jnp.where(p > 0, p * (log_p - log_q), 0.0)


def _check_probs(probs: jax.Array, log_probs: jax.Array | None) -> None:
  if probs.ndim != 2:
    raise ValueError(f'probs must have shape [N, num_classes], got {probs.shape}.')
  if log_probs is not None and log_probs.shape != probs.shape:
    raise ValueError(f'log_probs has shape {log_probs.shape}, probs has {probs.shape}.')


def modified_inception_score(probs: jax.Array, log_probs: jax.Array | None = None, *,
                             eps: float = LOG_EPS) -> jax.Array:
  """Modified inception score of Sec. 4.1 / App. C: I' = E_x KL(p(y) || p(y|x)).

  Two changes from Salimans et al. (2016), both made by the paper: (i) the KL's arguments are
  swapped, (ii) there is no exp. p(y) is the marginal (1/N) sum_x p(y|x) over the N samples
  given, and higher is better. (Torch's `nn.DistKLDivCriterion(log q, p)` computes exactly
  KL(p || q) from log-probabilities, a plausible origin of the swapped order; the paper does
  not say.) Each term takes log p(y|x) of every class, including classes the sample
  almost surely is not, so I' grows with the classifier's confidence and is not comparable
  across classifiers, which is the paper's own caveat (footnote 2).

  Hand values: p(y|x) uniform for every x gives I' = 0. K one-hot samples, one per class,
  give -log K - ((K-1)/K) log eps with the floor (22.565 for K=10, eps=1e-12) and +inf
  without it.

  Args:
    probs: p(y|x), shape [N, K], rows summing to 1.
    log_probs: optional log p(y|x), shape [N, K] (e.g. `jax.nn.log_softmax(logits)`). When
      given it replaces log(max(probs, eps)), so no floor is applied.
    eps: floor on p(y|x) and p(y) inside logarithms.
  Returns:
    Scalar I' (nats).
  """
  _check_probs(probs, log_probs)
  probs = _at_least_float32(probs)
  marginal = jnp.mean(probs, axis=0, keepdims=True)  # p(y), [1, K]
  log_cond = _log(probs, eps) if log_probs is None else _at_least_float32(log_probs)
  kl = jnp.sum(_xlogy_ratio(marginal, _log(marginal, eps), log_cond), axis=-1)  # [N]
  return jnp.mean(kl)


def inception_score(probs: jax.Array, log_probs: jax.Array | None = None, *,
                    eps: float = LOG_EPS) -> jax.Array:
  """Inception score of Salimans et al. (2016): exp(E_x KL(p(y|x) || p(y))).

  The original form, for comparison with I' (Sec. 4.1 says I' keeps "the score's original
  meaning"). Computed over all N samples at once (no 10-split averaging). It lies in [1, K]:
  1 when every p(y|x) equals p(y), K for confident predictions spread evenly over K classes.

  Args:
    probs: p(y|x), shape [N, K].
    log_probs: optional exact log p(y|x), shape [N, K]; see `modified_inception_score`.
    eps: floor inside logarithms. Here p(y|x) also weighs its own log, so the floor only
      matters for p(y) of classes no sample predicts, where the weight is 0 anyway.
  Returns:
    Scalar IS.
  """
  _check_probs(probs, log_probs)
  probs = _at_least_float32(probs)
  marginal = jnp.mean(probs, axis=0, keepdims=True)  # [1, K]
  log_cond = _log(probs, eps) if log_probs is None else _at_least_float32(log_probs)
  kl = jnp.sum(_xlogy_ratio(probs, log_cond, _log(marginal, eps)), axis=-1)  # [N]
  return jnp.exp(jnp.mean(kl))


def feature_statistics(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and covariance of features, the Gaussian fit used by the Frechet distance.

  Args:
    features: shape [N, F], N >= 2, e.g. the classifier's penultimate activations.
  Returns:
    (mu [F], sigma [F, F]): the mean, and the unbiased covariance (divides by N - 1, as
    `numpy.cov` and the reference FID code do).
  """
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f'features must have shape [N >= 2, F], got {features.shape}.')
  features = _at_least_float32(features)
  mu = jnp.mean(features, axis=0)  # [F]
  centred = features - mu  # [N, F]
  sigma = jnp.matmul(centred.T, centred, precision=_HIGHEST) / (features.shape[0] - 1)
  return mu, sigma


def sqrt_psd(matrix: jax.Array) -> jax.Array:
  """Symmetric PSD square root V diag(sqrt(max(w, 0))) V^T; negative round-off eigenvalues -> 0."""
  matrix = 0.5 * (matrix + matrix.T)
  w, v = jnp.linalg.eigh(matrix)
  return jnp.matmul(v * jnp.sqrt(jnp.maximum(w, 0.0)), v.T, precision=_HIGHEST)


def covariance_factor(sigma: jax.Array, features: jax.Array | None = None) -> jax.Array:
  """A factor L [R, F] with L^T L = sigma, for `frechet_distance(..., factor2=L)`.

  With the features [N, F] that gave `sigma` and N <= F (a rank-deficient covariance), the
  centred features / sqrt(N - 1): exact, with no square root of the (round-off) zero
  eigenvalues, which would cost ~1e-3 relative precision. Otherwise the PSD square root
  (R = F), from one `eigh`.
  """
  if features is not None and features.shape[0] <= features.shape[-1]:
    features = _at_least_float32(features)
    return (features - jnp.mean(features, axis=0)) / jnp.sqrt(features.shape[0] - 1.0)
  return sqrt_psd(_at_least_float32(sigma))


def trace_sqrt_product(sigma1: jax.Array, sigma2: jax.Array, *,
                       factor2: jax.Array | None = None) -> jax.Array:
  """tr sqrt(S1 S2) for symmetric PSD S1, S2, via symmetric eigendecompositions.

  S1 S2 is not symmetric, but it is similar to A = S1^(1/2) S2 S1^(1/2) (conjugate by
  S1^(1/2)), which is symmetric PSD, so both have the same non-negative eigenvalues l_i and
  tr sqrt(S1 S2) = sum_i sqrt(l_i). Two `eigh` calls, no complex arithmetic. Given a factor
  L of S2 (L^T L = S2, `covariance_factor`), A = L S1 L^T instead: S1 S2 = S1 L^T L has the
  non-zero eigenvalues of L S1 L^T, so one `eigvalsh` (of an [R, R] matrix) suffices.
  """
  if factor2 is not None:
    inner = jnp.matmul(jnp.matmul(factor2, sigma1, precision=_HIGHEST), factor2.T,
                       precision=_HIGHEST)
  else:
    root1 = sqrt_psd(sigma1)  # [F, F]
    inner = jnp.matmul(jnp.matmul(root1, sigma2, precision=_HIGHEST), root1,
                       precision=_HIGHEST)
  inner = 0.5 * (inner + inner.T)
  eigenvalues = jnp.linalg.eigvalsh(inner)
  return jnp.sum(jnp.sqrt(jnp.maximum(eigenvalues, 0.0)))


def frechet_distance(mu1: jax.Array, sigma1: jax.Array, mu2: jax.Array,
                     sigma2: jax.Array, *, factor2: jax.Array | None = None) -> jax.Array:
  """Frechet distance between N(mu1, S1) and N(mu2, S2) (Heusel et al., 2017; "FID").

  d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). Not a score of the EBGAN paper,
  which predates it; here it is computed on the offline MNIST classifier's features (App. C's
  classifier), so its values are not comparable to Inception-feature FIDs.

  Precision: float32 unless given float64 with `jax_enable_x64` on. With full-rank
  covariances (N well above F samples) float32 agrees with a float64 `scipy.linalg.sqrtm`
  to ~1e-5 of tr S1 + tr S2. Rank-deficient covariances (N <= F) are worse, ~1e-3 of it: the
  square root magnifies the round-off in the many zero eigenvalues. With `factor2` from the
  features (`covariance_factor(sigma2, features2)`) no square root is taken at all, and the
  ~1e-5 holds for rank-deficient S1 and S2 too (the tests measure 3e-6). Clipped at 0.

  Args:
    mu1, mu2: means, shape [F].
    sigma1, sigma2: covariances, shape [F, F], symmetric PSD.
    factor2: optional `covariance_factor(sigma2)` (L^T L = sigma2), computed once when many
      distances share the second side: then one `eigvalsh` per call, no `eigh`.
  Returns:
    Scalar squared distance d^2 (the quantity usually reported as FID).
  """
  f = mu1.shape[-1]
  if mu1.shape != (f,) or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
    raise ValueError(f'Mismatched statistics: mu1 {mu1.shape}, sigma1 {sigma1.shape}, '
                     f'mu2 {mu2.shape}, sigma2 {sigma2.shape}; expected [F] and [F, F].')
  if factor2 is not None and (factor2.ndim != 2 or factor2.shape[-1] != f):
    raise ValueError(f'factor2 has shape {factor2.shape}; expected [R, {f}].')
  mu1, mu2, sigma1, sigma2 = (_at_least_float32(a) for a in (mu1, mu2, sigma1, sigma2))
  diff = mu1 - mu2
  tr_sqrt = trace_sqrt_product(
      sigma1, sigma2, factor2=None if factor2 is None else _at_least_float32(factor2))
  distance = (jnp.dot(diff, diff, precision=_HIGHEST) + jnp.trace(sigma1) + jnp.trace(sigma2)
              - 2.0 * tr_sqrt)
  return jnp.maximum(distance, 0.0)


def class_histogram(probs_or_labels: jax.Array, num_classes: int) -> jax.Array:
  """Counts of predicted classes among generated samples, for spotting mode dropping.

  Args:
    probs_or_labels: p(y|x) of shape [N, K] (the argmax is the predicted class), or
      predicted labels of shape [N] (ints in [0, num_classes)).
    num_classes: K.
  Returns:
    int32 counts, shape [num_classes], summing to N.
  """
  if probs_or_labels.ndim == 2:
    if probs_or_labels.shape[1] != num_classes:
      raise ValueError(f'probs have {probs_or_labels.shape[1]} classes, expected {num_classes}.')
    labels = jnp.argmax(probs_or_labels, axis=-1)  # [N]
  elif probs_or_labels.ndim == 1:
    labels = probs_or_labels.astype(jnp.int32)
  else:
    raise ValueError(f'Expected probs [N, K] or labels [N], got shape {probs_or_labels.shape}.')
  return jnp.bincount(labels, length=num_classes).astype(jnp.int32)


def modes_covered(histogram: jax.Array, min_count: int = 1) -> jax.Array:
  """Number of classes predicted for at least `min_count` samples (K = all modes covered).

  Args:
    histogram: counts per class, shape [K], from `class_histogram`.
    min_count: a class counts as covered from this many samples on. With N samples a
      threshold such as N / (10 K) ignores classes hit only by stray misclassifications.
  Returns:
    int32 scalar in [0, K].
  """
  return jnp.sum(histogram >= min_count).astype(jnp.int32)


# -- KID and precision / recall -------------------------------------------------------------------
KID_DEGREE = 3       # Bińkowski et al. (2018): k(x, y) = (x . y / d + 1)^3.
PR_NEIGHBOURS = 3    # Kynkäänniemi et al. (2019): the k-th nearest neighbour radius, k = 3.
_BLOCK = 1024        # Rows per block of the [N, M] kernel and distance matrices (bounds memory).


def _blocks(x: jax.Array) -> list[jax.Array]:
  return [x[i:i + _BLOCK] for i in range(0, x.shape[0], _BLOCK)]


def _kernel_sums(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sum of k(x_i, y_j) over all i, j; sum of k(x_i, y_i) over i when x is y), in blocks."""
  d = x.shape[-1]
  total, diagonal = 0.0, 0.0
  for start, block in zip(range(0, x.shape[0], _BLOCK), _blocks(x)):
    k = (jnp.matmul(block, y.T, precision=_HIGHEST) / d + 1.0) ** KID_DEGREE  # [b, M]
    total = total + jnp.sum(k)
    if x is y:
      diagonal = diagonal + jnp.sum(jnp.diagonal(k, offset=start))
  return total, diagonal


def kid_self_term(features: jax.Array) -> jax.Array:
  """E k(y, y') over distinct pairs of one set: the part of KID a fixed reference repeats."""
  y = _at_least_float32(features)
  total, diagonal = _kernel_sums(y, y)
  return (total - diagonal) / (y.shape[0] * (y.shape[0] - 1))


def kernel_inception_distance(features1: jax.Array, features2: jax.Array, *,
                              self_term2: jax.Array | None = None) -> jax.Array:
  """KID (Bińkowski et al., 2018): the unbiased estimate of MMD^2 under a cubic kernel.

  MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y) with k(x, y) = (x . y / d + 1)^3, each
  expectation over distinct pairs (i != j within a set): unbiased at any sample size, unlike
  the Frechet distance, whose bias grows as the samples shrink relative to the feature
  width (2,000 test digits against 2,048 classifier features here). Beyond the paper.

  Args:
    features1: [N, d] (e.g. generated samples' features), N >= 2.
    features2: [M, d] (e.g. the real test split's), M >= 2.
    self_term2: `kid_self_term(features2)`, when computed once for many calls.
  Returns:
    Scalar MMD^2 estimate (may be slightly negative for near-identical distributions).
  """
  x, y = _at_least_float32(features1), _at_least_float32(features2)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
    raise ValueError(f'Expected features [N >= 2, d] and [M >= 2, d], got {x.shape}, {y.shape}.')
  xy, _ = _kernel_sums(x, y)
  yy = kid_self_term(y) if self_term2 is None else self_term2
  return kid_self_term(x) + yy - 2.0 * xy / (x.shape[0] * y.shape[0])


def _squared_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """||a_i - b_j||^2, [len(a), len(b)], clipped at 0 (round-off)."""
  cross = jnp.matmul(a, b.T, precision=_HIGHEST)
  return jnp.maximum(jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2 * cross, 0.0)


def _kth_smallest(rows: jax.Array, k: int) -> jax.Array:
  """The k-th smallest entry of each row (k = 0: the minimum), by k + 1 passes of min-and-mask
  (for the small k of a nearest-neighbour radius, far cheaper than top_k or a sort on a CPU;
  ties are masked together, which only matters for duplicated points)."""
  for _ in range(k):
    rows = jnp.where(rows <= jnp.min(rows, axis=1, keepdims=True), jnp.inf, rows)
  return jnp.min(rows, axis=1)


def _knn_radii(x: jax.Array, k: int) -> jax.Array:
  """Squared distance from each x_i to its k-th nearest neighbour in x (itself excluded)."""
  radii = [_kth_smallest(_squared_distances(block, x), k) for block in _blocks(x)]
  return jnp.concatenate(radii)


def _coverage(points: jax.Array, centres: jax.Array, radii: jax.Array) -> jax.Array:
  """Fraction of `points` inside at least one ball (centre_j, radius_j)."""
  inside = [jnp.any(_squared_distances(block, centres) <= radii[None, :], axis=1)
            for block in _blocks(points)]
  return jnp.mean(jnp.concatenate(inside).astype(jnp.float32))


def knn_radii(features: jax.Array, k: int = PR_NEIGHBOURS) -> jax.Array:
  """Squared distance from each sample to its k-th nearest neighbour in its own set, [N]."""
  return _knn_radii(_at_least_float32(features), k)


def precision_recall(real_features: jax.Array, fake_features: jax.Array,
                     k: int = PR_NEIGHBOURS, *, real_radii: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """Improved precision and recall (Kynkäänniemi et al., 2019), in a feature space.

  Each set's manifold is the union of balls around its samples reaching their k-th nearest
  neighbour (within the set). Precision: the fraction of generated samples inside the real
  manifold (are the samples realistic?). Recall: the fraction of real samples inside the
  generated manifold (is the data covered?). A generator that drops modes keeps its
  precision and loses recall: the failure the pulling-away term (Eq. 14) targets. Beyond the
  paper.

  Args:
    real_features: [N, d], N > k.
    fake_features: [M, d], M > k.
    k: the neighbour that sets each ball's radius.
    real_radii: `knn_radii(real_features, k)`, when computed once for many calls.
  Returns:
    (precision, recall), scalars in [0, 1].
  """
  real, fake = _at_least_float32(real_features), _at_least_float32(fake_features)
  if min(len(real), len(fake)) <= k or real.shape[1] != fake.shape[1]:
    raise ValueError(f'Expected features [N > {k}, d] and [M > {k}, d], got {real.shape}, '
                     f'{fake.shape}.')
  real_radii = _knn_radii(real, k) if real_radii is None else real_radii
  precision = _coverage(fake, real, real_radii)
  recall = _coverage(real, fake, _knn_radii(fake, k))
  return precision, recall
