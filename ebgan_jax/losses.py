"""EBGAN objectives (Zhao, Mathieu & LeCun, ICLR 2017) and the probabilistic GAN baseline.

Pure functions of arrays. Every reduction over the batch is written out so that the
per-sample structure of the paper's losses is visible: the hinge of Eq. (1) acts on each
generated sample's energy *before* the batch mean, never on the batch-mean energy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Codes whose norm is below this have no direction; their cosine similarities are taken as 0.
_EPS = 1e-12


def energy(x: jax.Array, x_rec: jax.Array) -> jax.Array:
  """Auto-encoder energy, Eq. (13): D(x) = ||Dec(Enc(x)) - x||_2 per sample.

  The norm is the Euclidean norm over all pixels and channels of one sample (not the
  mean squared error), so its scale grows with the image size: sqrt(32*32) * 2 = 64 is
  the largest possible energy of a 32x32 image in [-1, 1], which is why the paper's margins
  (10 on MNIST, 80 on LSUN) make sense only for this form.

  Args:
    x: images, shape [B, ...].
    x_rec: reconstructions Dec(Enc(x)), same shape as `x`.
  Returns:
    Energies, shape [B], non-negative.
  """
  if x.shape != x_rec.shape:
    raise ValueError(f'energy: x has shape {x.shape} but its reconstruction has shape '
                     f'{x_rec.shape}; the decoder must output the input image size.')
  diff = (x_rec - x).reshape(x.shape[0], -1).astype(jnp.float32)
  # sqrt(sum(d^2)) with a gradient that stays finite at d == 0. The test is `== 0`, not
  # `> 0`: a NaN must stay NaN (NaN > 0 is false, which would report it as energy 0 and hide
  # a diverged run from the training loop's non-finite check).
  sq = jnp.sum(diff * diff, axis=-1)
  zero = sq == 0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def squared_l2_energy(x: jax.Array, x_rec: jax.Array) -> jax.Array:
  """Vanilla squared L2 reconstruction cost per sample, sum_pixels (Dec(Enc(x)) - x)^2.

  App. D: the EBGAN-LN experiment follows the Ladder Network's own cost, not Eq. (13)'s norm.

  Args:
    x: images, shape [B, ...].
    x_rec: reconstructions, same shape.
  Returns:
    Shape [B].
  """
  diff = (x_rec - x).reshape(x.shape[0], -1).astype(jnp.float32)
  return jnp.sum(diff * diff, axis=-1)


def d_loss(energy_real: jax.Array, energy_fake: jax.Array, margin: jax.Array | float) -> jax.Array:
  """Discriminator loss, Eq. (1): D(x) + [m - D(G(z))]^+, averaged over the batch.

  The hinge is applied per generated sample; only then is the batch averaged.

  Args:
    energy_real: D(x) for real images, shape [B], non-negative (Eq. 13).
    energy_fake: D(G(z)) for generated images, shape [B]; G's output is held fixed.
    margin: m >= 0; the paper uses 10 (MNIST), 20 (CelebA), 40/80 (ImageNet), 80 (LSUN).
  Returns:
    Scalar loss.
  """
  return jnp.mean(energy_real + jax.nn.relu(margin - energy_fake))


def g_loss(energy_fake: jax.Array) -> jax.Array:
  """Generator loss, Eq. (2): D(G(z)), averaged over the batch.

  Args:
    energy_fake: D(G(z)), shape [B].
  Returns:
    Scalar loss (without the pulling-away term, which `pulling_away_term` adds).
  """
  return jnp.mean(energy_fake)


def pulling_away_term(codes: jax.Array) -> jax.Array:
  """Pulling-away term, Eq. (14): mean squared cosine similarity over pairs i != j.

  f_PT(S) = 1 / (N (N - 1)) * sum_i sum_{j != i} (S_i^T S_j / (||S_i|| ||S_j||))^2,
  where S_i is the encoder code of the i-th generated sample. It is bounded in [0, 1],
  0 for mutually orthogonal codes, 1 for codes that all point the same way, and invariant
  to the scale of each code. The paper adds it to the generator loss only (Sec. 2.4).

  Args:
    codes: encoder outputs of a generated batch, shape [N, ...] with N >= 2; trailing
      axes are flattened into the code vector.
  Returns:
    Scalar.
  """
  n = codes.shape[0]
  if n < 2:
    raise ValueError(f'pulling_away_term needs a batch of at least 2 codes, got {n}.')
  s = codes.reshape(n, -1).astype(jnp.float32)
  sq = jnp.sum(s * s, axis=-1, keepdims=True)  # [N, 1]
  # A zero code (all ReLUs off) has no direction: its unit vector is 0. The double `where`
  # keeps the gradient finite there (sqrt's derivative at 0 would give 0 * inf = NaN). A NaN
  # code is not "zero" (NaN <= eps is false): it stays NaN, for the non-finite check.
  no_dir = sq <= _EPS**2
  unit = jnp.where(no_dir, 0.0, s / jnp.sqrt(jnp.where(no_dir, 1.0, sq)))
  cosine = unit @ unit.T  # [N, N]
  off_diagonal = jnp.sum(cosine**2) - jnp.sum(jnp.diagonal(cosine)**2)
  return off_diagonal / (n * (n - 1))


def margin_at(step: jax.Array | int, margin: jax.Array | float,
              decay_steps: int = 0) -> jax.Array:
  """Margin schedule: constant m, or a linear decay from m to 0 over `decay_steps` steps.

  App. D decays the EBGAN-LN margin from 16 to 0 within the first 60,000 steps; App. E
  recommends starting large and decaying to 0. With `decay_steps == 0` the margin is
  constant (Sec. 4.1: m = 10, not tuned).

  Args:
    step: the training step (0-based), scalar.
    margin: m at step 0.
    decay_steps: K; m(step) = m * max(0, 1 - step / K). 0 keeps m constant.
  Returns:
    Scalar float32.
  """
  margin = jnp.asarray(margin, jnp.float32)
  if decay_steps <= 0:
    return margin
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / decay_steps, 0.0, 1.0)
  return margin * (1.0 - frac)


def gan_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """Probabilistic GAN discriminator loss (Goodfellow et al., 2014): binary cross-entropy.

  -log sigmoid(l_real) - log(1 - sigmoid(l_fake)), averaged over the batch.

  Args:
    logits_real: D's logits for real images, shape [B].
    logits_fake: D's logits for generated images, shape [B].
  Returns:
    Scalar.
  """
  return jnp.mean(jax.nn.softplus(-logits_real) + jax.nn.softplus(logits_fake))


def gan_g_loss(logits_fake: jax.Array) -> jax.Array:
  """Non-saturating generator loss (Goodfellow et al., 2014, Sec. 3): -log sigmoid(D(G(z))).

  Args:
    logits_fake: D's logits for generated images, shape [B].
  Returns:
    Scalar.
  """
  return jnp.mean(jax.nn.softplus(-logits_fake))
