"""Tests of ebgan_jax.losses: Eqs. (1), (2), (13), (14), the margin schedule and the GAN BCE.

Every expected number is worked out by hand (working in the comment) or with numpy through a
different formulation (explicit loops, -log(sigmoid)), never by calling the code under test.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import losses

# One compile per input shape instead of one per op (the eager path is slow on busy CPUs).
_pt = jax.jit(losses.pulling_away_term)


# -- energy, Eq. (13) -------------------------------------------------------------------------

def test_energy_is_per_sample_l2_norm_over_flattened_pixels():
  x = jnp.zeros((2, 2, 2, 1))                      # [B, H, W, C]
  x_rec = jnp.array([[3., 4., 0., 0.],             # sqrt(9 + 16) = 5
                     [1., 2., 2., 0.]]).reshape(2, 2, 2, 1)  # sqrt(1 + 4 + 4) = 3
  got = losses.energy(x, x_rec)
  chex.assert_shape(got, (2,))
  chex.assert_trees_all_close(got, jnp.array([5.0, 3.0]), rtol=1e-6)


def test_energy_uses_the_difference_not_the_reconstruction():
  # x - x_rec = [1, -1, 1, -1] for both samples -> sqrt(4) = 2; the norm of x_rec alone is
  # sqrt(4 * 3^2) = 6 and that of x_rec - x with x ignored would not be 2.
  x = jnp.array([[4., 2., 4., 2.], [0., -2., 0., -2.]])
  x_rec = jnp.array([[3., 3., 3., 3.], [-1., -1., -1., -1.]])
  chex.assert_trees_all_close(losses.energy(x, x_rec), jnp.array([2.0, 2.0]), rtol=1e-6)


def test_energy_is_not_the_mean_squared_error():
  # A 32x32 image at -1 reconstructed as +1 everywhere: ||2 * ones(1024)|| = 2 * 32 = 64,
  # the largest energy of a 32x32 image in [-1, 1] (MSE would give 4, RMSE 2).
  x = -jnp.ones((1, 32, 32, 1))
  chex.assert_trees_all_close(losses.energy(x, -x), jnp.array([64.0]), rtol=1e-6)


def test_energy_shape_mismatch_raises():
  with pytest.raises(ValueError, match='shape'):
    losses.energy(jnp.zeros((2, 32, 32, 1)), jnp.zeros((2, 28, 28, 1)))


def test_energy_gradient_is_unit_residual_and_finite_at_zero():
  x = jnp.zeros((2, 4))
  x_rec = jnp.array([[3., 4., 0., 0.], [0., 0., 0., 0.]])  # 2nd sample: perfect reconstruction
  grad = jax.grad(lambda r: jnp.sum(losses.energy(x, r)))(x_rec)
  chex.assert_tree_all_finite(grad)
  # d||r||/dr = r / ||r|| = [3, 4, 0, 0] / 5; the zero residual gets 0 (sub-gradient).
  chex.assert_trees_all_close(grad, jnp.array([[0.6, 0.8, 0., 0.], [0., 0., 0., 0.]]),
                              atol=1e-6)


def test_energy_of_a_non_finite_sample_stays_non_finite():
  # A diverged D (NaN reconstructions) must not read as a perfect reconstruction (energy 0):
  # the training loop stops on non-finite losses, and would never see this one.
  x = jnp.zeros((3, 4))
  x_rec = jnp.array([[3., 4., 0., 0.], [jnp.nan, 0., 0., 0.], [0., jnp.inf, 0., 0.]])
  got = np.asarray(losses.energy(x, x_rec))
  assert got[0] == 5.0 and np.isnan(got[1]) and got[2] == np.inf


def test_squared_l2_energy_values_and_gradient():
  x = jnp.zeros((2, 2, 2))
  x_rec = jnp.array([[3., 4., 0., 0.], [1., 2., 2., 0.]]).reshape(2, 2, 2)
  got = losses.squared_l2_energy(x, x_rec)
  chex.assert_shape(got, (2,))
  chex.assert_trees_all_close(got, jnp.array([25.0, 9.0]), rtol=1e-6)  # 9+16, 1+4+4
  grad = jax.grad(lambda r: jnp.sum(losses.squared_l2_energy(x, r)))(x_rec)
  chex.assert_trees_all_close(grad, 2.0 * x_rec, rtol=1e-6)  # d sum(r^2)/dr = 2 r


# -- d_loss (Eq. 1) and g_loss (Eq. 2) --------------------------------------------------------

def test_d_loss_hinge_is_per_sample_not_on_the_batch_mean():
  energy_real = jnp.array([1.0, 2.0])
  energy_fake = jnp.array([12.0, 7.0])  # m=10: hinges [10-12]^+ = 0, [10-7]^+ = 3
  got = losses.d_loss(energy_real, energy_fake, margin=10.0)
  chex.assert_shape(got, ())
  chex.assert_trees_all_close(got, 3.0, rtol=1e-6)  # mean(1 + 0, 2 + 3) = 3.0, by hand
  # Hinge on the batch-mean energy would give 1.5 + [10 - 9.5]^+ = 2.0: must differ.
  assert abs(float(got) - 2.0) > 0.5


def test_d_loss_hinge_vanishes_above_margin():
  energy_real = jnp.array([1.0, 3.0])
  energy_fake = jnp.array([11.0, 25.0])  # both above m=10: hinges 0, 0
  chex.assert_trees_all_close(losses.d_loss(energy_real, energy_fake, 10.0), 2.0)  # mean(1, 3)


def test_d_loss_zero_margin_is_mean_real_energy():
  # m = 0 and energies >= 0: every hinge [0 - e]^+ is 0, so the loss is mean(D(x)) = 2.5.
  got = losses.d_loss(jnp.array([2.0, 3.0]), jnp.array([0.0, 4.0]), margin=0.0)
  chex.assert_trees_all_close(got, 2.5)


def test_d_loss_gradient_flows_only_through_active_hinges():
  energy_real = jnp.array([1.0, 2.0])
  energy_fake = jnp.array([12.0, 7.0])
  g_real, g_fake = jax.grad(losses.d_loss, argnums=(0, 1))(energy_real, energy_fake, 10.0)
  # d/d e_real = 1/B each; d/d e_fake = -1/B where m > e_fake (sample 2), 0 where inactive.
  chex.assert_trees_all_close(g_real, jnp.array([0.5, 0.5]))
  chex.assert_trees_all_close(g_fake, jnp.array([0.0, -0.5]))


def test_d_loss_accepts_traced_margin():
  got = jax.jit(losses.d_loss)(jnp.array([1.0, 2.0]), jnp.array([12.0, 7.0]), jnp.float32(10.0))
  chex.assert_trees_all_close(got, 3.0)


def test_g_loss_is_batch_mean_of_fake_energies():
  got = losses.g_loss(jnp.array([1.0, 2.0, 6.0]))
  chex.assert_shape(got, ())
  chex.assert_trees_all_close(got, 3.0)  # (1 + 2 + 6) / 3
  grad = jax.grad(losses.g_loss)(jnp.array([1.0, 2.0, 6.0]))
  chex.assert_trees_all_close(grad, jnp.full((3,), 1.0 / 3.0))


# -- pulling-away term, Eq. (14) --------------------------------------------------------------

def _pt_double_loop(codes: np.ndarray) -> float:
  """Eq. (14) written literally: 1/(N(N-1)) sum_i sum_{j!=i} (S_i.S_j / (|S_i||S_j|))^2."""
  s = codes.reshape(codes.shape[0], -1).astype(np.float64)
  n = s.shape[0]
  total = 0.0
  for i in range(n):
    for j in range(n):
      if i == j:
        continue
      cos = np.dot(s[i], s[j]) / (np.linalg.norm(s[i]) * np.linalg.norm(s[j]))
      total += cos**2
  return total / (n * (n - 1))


def test_pulling_away_term_hand_value():
  # S_1 = [1, 0], S_2 = [1, 1]: cos = 1 / sqrt(2), cos^2 = 1/2; pairs (1,2),(2,1) -> 1 / (2*1).
  got = _pt(jnp.array([[1.0, 0.0], [1.0, 1.0]]))
  chex.assert_shape(got, ())
  chex.assert_trees_all_close(got, 0.5, rtol=1e-6)


@pytest.mark.parametrize('shape', [(2, 3), (5, 7), (16, 4, 2)])
def test_pulling_away_term_matches_numpy_double_loop(shape):
  codes = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
  got = _pt(jnp.asarray(codes))
  chex.assert_trees_all_close(got, _pt_double_loop(codes), rtol=1e-5)


def test_pulling_away_term_zero_for_mutually_orthogonal_codes():
  codes = jnp.eye(4, 6) * jnp.array([[1.0], [3.0], [0.5], [7.0]])  # orthogonal, mixed norms
  chex.assert_trees_all_close(_pt(codes), 0.0, atol=1e-7)


def test_pulling_away_term_one_for_identical_and_positively_scaled_codes():
  v = jnp.array([0.3, -1.2, 2.0, 0.7])
  identical = jnp.tile(v, (5, 1))
  scaled = v[None, :] * jnp.array([[1.0], [2.0], [0.5], [30.0], [1e-3]])
  chex.assert_trees_all_close(_pt(identical), 1.0, rtol=1e-5)
  chex.assert_trees_all_close(_pt(scaled), 1.0, rtol=1e-5)


def test_pulling_away_term_invariant_to_per_code_scale():
  rng = np.random.default_rng(0)
  codes = rng.normal(size=(8, 10)).astype(np.float32)
  scales = rng.uniform(0.01, 100.0, size=(8, 1)).astype(np.float32)
  chex.assert_trees_all_close(_pt(jnp.asarray(codes * scales)),
                              _pt_double_loop(codes), rtol=1e-5)


def test_pulling_away_term_bounded_in_unit_interval():
  codes = np.abs(np.random.default_rng(1).normal(size=(6, 3)))  # post-ReLU-like codes
  got = float(_pt(jnp.asarray(codes, jnp.float32)))
  assert 0.0 <= got <= 1.0


@pytest.mark.parametrize('n', [0, 1])
def test_pulling_away_term_needs_two_codes(n):
  with pytest.raises(ValueError, match='at least 2'):
    losses.pulling_away_term(jnp.ones((n, 4)))


def test_pulling_away_term_finite_with_all_zero_code_and_gradient():
  # ReLU codes can be all zero. Its cosines count as 0: with S = {0, [1,0], [1,1]} only the
  # pair ([1,0], [1,1]) contributes cos^2 = 1/2, twice -> 1 / (3 * 2) = 1/6.
  codes = jnp.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
  got = _pt(codes)
  chex.assert_tree_all_finite(got)
  chex.assert_trees_all_close(got, 1.0 / 6.0, rtol=1e-6)
  grad = jax.jit(jax.grad(losses.pulling_away_term))(codes)
  chex.assert_tree_all_finite(grad)


def test_pulling_away_term_of_a_nan_code_is_nan_not_a_zero_code():
  codes = jnp.array([[1.0, 0.0], [jnp.nan, 0.0], [1.0, 1.0]])
  assert np.isnan(float(_pt(codes)))


def test_pulling_away_term_gradient_matches_finite_differences():
  codes = np.random.default_rng(2).normal(size=(4, 3))
  grad = np.asarray(jax.jit(jax.grad(losses.pulling_away_term))(
      jnp.asarray(codes, jnp.float32)))
  eps = 1e-6
  numeric = np.zeros_like(codes)
  for idx in np.ndindex(codes.shape):
    plus, minus = codes.copy(), codes.copy()
    plus[idx] += eps
    minus[idx] -= eps
    numeric[idx] = (_pt_double_loop(plus) - _pt_double_loop(minus)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-4)


# -- margin schedule --------------------------------------------------------------------------

@pytest.mark.parametrize('step', [0, 1, 1000, 10**7])
def test_margin_at_constant_without_decay(step):
  chex.assert_trees_all_close(losses.margin_at(step, 10.0, decay_steps=0), 10.0)


@pytest.mark.parametrize('step,expected', [
    (0, 16.0),       # m at step 0
    (25, 12.0),      # 16 * (1 - 25/100)
    (50, 8.0),       # m/2 at K/2
    (100, 0.0),      # 0 at K
    (101, 0.0),      # and after (not negative)
    (60_000, 0.0),
])
def test_margin_at_linear_decay(step, expected):
  got = losses.margin_at(step, 16.0, decay_steps=100)
  chex.assert_trees_all_close(got, expected, atol=1e-6)
  # Same under jit with a traced step (as inside the train step).
  jitted = jax.jit(lambda s: losses.margin_at(s, 16.0, decay_steps=100))(jnp.int32(step))
  chex.assert_trees_all_close(jitted, expected, atol=1e-6)


# -- probabilistic GAN baseline ---------------------------------------------------------------

def _np_log_sigmoid(x):
  return np.log(1.0 / (1.0 + np.exp(-x)))


def test_gan_losses_hand_value_at_zero_logits():
  zeros = jnp.zeros((3,))
  # sigmoid(0) = 1/2: -log(1/2) - log(1 - 1/2) = 2 log 2 for D, -log(1/2) = log 2 for G.
  chex.assert_trees_all_close(losses.gan_d_loss(zeros, zeros), 2 * np.log(2.0), rtol=1e-6)
  chex.assert_trees_all_close(losses.gan_g_loss(zeros), np.log(2.0), rtol=1e-6)


def test_gan_d_loss_matches_numpy_bce():
  rng = np.random.default_rng(3)
  real = rng.uniform(-6, 6, size=16)
  fake = rng.uniform(-6, 6, size=16)
  s_real, s_fake = 1 / (1 + np.exp(-real)), 1 / (1 + np.exp(-fake))
  expected = np.mean(-np.log(s_real) - np.log(1.0 - s_fake))
  got = losses.gan_d_loss(jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32))
  chex.assert_shape(got, ())
  chex.assert_trees_all_close(got, expected, rtol=1e-5)


def test_gan_g_loss_is_non_saturating_bce():
  fake = np.random.default_rng(4).uniform(-6, 6, size=16)
  expected = np.mean(-_np_log_sigmoid(fake))
  got = losses.gan_g_loss(jnp.asarray(fake, jnp.float32))
  chex.assert_trees_all_close(got, expected, rtol=1e-5)
  # Non-saturating: d/dl -log sigmoid(l) = sigmoid(l) - 1, not 0 for confident fakes.
  grad = jax.grad(losses.gan_g_loss)(jnp.array([-10.0]))
  chex.assert_trees_all_close(grad, jnp.array([1 / (1 + np.exp(-(-10.0))) - 1.0]), rtol=1e-5)


def test_gan_losses_finite_for_extreme_logits():
  big = jnp.array([-200.0, 200.0])
  chex.assert_tree_all_finite((losses.gan_d_loss(big, big), losses.gan_g_loss(big)))
  # -log sigmoid(-200) = 200 (exactly, up to exp(-200)): no overflow to inf.
  chex.assert_trees_all_close(losses.gan_g_loss(jnp.array([-200.0])), 200.0, rtol=1e-6)
