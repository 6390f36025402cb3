"""Tests of ebgan_jax.inception: the FID Inception-v3 and FID (the Frechet distance itself is
`scores.frechet_distance`, run in float64 here).

FID is checked against an independent numpy formula: for covariances
S1 = A^T A / (n1 - 1) and S2 = B^T B / (n2 - 1) of centred features A, B, the eigenvalues of
S1 S2 are the squared singular values of A B^T / sqrt((n1 - 1)(n2 - 1)), so
Tr((S1 S2)^(1/2)) is the sum of those singular values (no matrix square root involved).
The network runs with random weights (no weights file is downloaded) at its smallest input.
"""

import jax
import numpy as np
import pytest

from ebgan_jax import inception


def _numpy_fid(x: np.ndarray, y: np.ndarray) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  a, b = x - x.mean(0), y - y.mean(0)
  cross = a @ b.T / np.sqrt((len(x) - 1) * (len(y) - 1))
  trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
  diff = x.mean(0) - y.mean(0)
  trace1 = np.sum(a * a) / (len(x) - 1)
  trace2 = np.sum(b * b) / (len(y) - 1)
  return float(diff @ diff + trace1 + trace2 - 2 * trace_sqrt)


def test_fid_matches_numpy_on_gaussians():
  rng = np.random.RandomState(0)
  x = rng.normal(size=(500, 16))
  y = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
  np.testing.assert_allclose(inception.fid(x, y), _numpy_fid(x, y), rtol=1e-6)
  assert abs(inception.fid(x, x)) < 1e-6


def test_parameter_count_is_inception_v3_without_classifier(random_inception):
  # torchvision's inception_v3: 27,161,264 with the auxiliary head (3,326,696) and the
  # 1000-way classifier (2,049,000); FID uses neither.
  count = sum(x.size for x in jax.tree.leaves(random_inception[0]['params']))
  assert count == 27_161_264 - 3_326_696 - 2_049_000


def test_features_of_random_net_and_fid_against_numpy(random_inception):
  random_net, path = random_inception  # The weights went through the PyTorch-named file.
  rng = np.random.RandomState(0)
  real = rng.randint(0, 256, (6, 24, 24, 3)).astype(np.uint8)  # resized up to 75x75
  fake = np.clip(rng.normal(0.2, 0.5, (5, 24, 24, 3)), -1, 1).astype(np.float32)
  with np.load(path) as data:
    assert data['Conv2d_1a_3x3.conv.weight'].shape == (32, 3, 3, 3)  # [out, in, kh, kw]
    assert 'Mixed_7c.branch_pool.bn.running_var' in data.files
  extractor = inception.FeatureExtractor.from_file(path, batch_size=4,
                                                   input_size=inception.MIN_INPUT_SIZE)
  jax.tree.map(np.testing.assert_array_equal, extractor.variables, random_net)
  f_real, f_fake = extractor(real), extractor(fake)
  assert f_real.shape == (6, inception.FEATURES) and f_fake.shape == (5, inception.FEATURES)
  assert np.isfinite(f_real).all() and f_real.std() > 0
  value = inception.fid(f_real, f_fake)
  np.testing.assert_allclose(value, _numpy_fid(f_real, f_fake), rtol=1e-6)
  assert value > 0


def test_missing_weights_file_says_nothing_is_downloaded(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
    inception.load_variables(tmp_path / 'absent.npz')


def test_incomplete_weights_file_names_what_is_missing(tmp_path):
  path = tmp_path / 'partial.npz'
  np.savez(path, **{'Conv2d_1a_3x3.conv.weight': np.zeros((32, 3, 3, 3), np.float32)})
  with pytest.raises(ValueError, match='lacks'):
    inception.load_variables(path)
