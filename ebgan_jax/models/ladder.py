"""Bottom-layer-cost Ladder Network, the discriminator of EBGAN-LN (Sec. 4.2, App. D).

App. D takes the permutation-invariant MNIST Ladder Network of Rasmus et al. (2015, "Semi-
supervised learning with ladder networks", Algorithm 1) and Pezeshki et al. (2015): a fully
connected encoder 784-1000-500-250-250-250-10 with batch normalization and ReLU after each
linear layer (softmax at the top), and only the bottom layer's reconstruction cost (the
bottom-only lambda_0 row of Rasmus et al.'s MNIST table, which the paper's Table 2 reproduces).
App. D, "Other details": batch normalization without the learned scale gamma, with the bias
beta only (after Salimans et al., 2016) -- also at the softmax layer.

The network has three paths that share every weight:

- clean encoder: z(l) = BN(W(l) h(l-1)), h(l) = ReLU(z(l) + beta(l)), softmax at the top;
  BN uses and updates running statistics like any `nn.BatchNorm` (`mlp.batch_norm`);
- corrupted encoder: x~ = x + noise, z~(l) = NB(W(l) h~(l-1)) + noise, h~(l) = ReLU(z~(l) +
  beta(l)), where NB normalizes with the batch statistics of the corrupted pre-activations
  themselves and the noise is N(0, noise_std^2) (Rasmus et al., Algorithm 1 and Sec. 4);
- decoder: u(L) = NB(h~(L)) (the corrupted softmax output), u(l) = NB(V(l+1) z^(l+1)) below,
  z^(l) = g(z~(l), u(l)) per unit with Rasmus et al.'s denoising function (`Combinator`), down
  to z^(0) = x_rec. The bottom-layer-cost model keeps this whole top-down path: every z^(l)
  feeds the layer below, although only z^(0) enters the cost.

Choices where the papers leave room, with their sources:

- The cost is on layer 0 only. Layer 0 has no batch normalization, so x_rec is compared with x
  itself, as in Rasmus et al.'s code, which normalizes z^(l) with the clean path's batch
  mean/std only where the clean path has them (l >= 1). EBGAN-LN's energy is then App. D's
  "vanilla form of l2 loss" per sample, `losses.squared_l2_energy(x, outputs['x_rec'])`.
  Rasmus et al. divide layer l's squared error by its width m_l (their cost, and `ladder.py` of
  their code), so their lambda_0 = 1000 equals App. D's lambda_L2 = 1000/784 on the per-sample
  sum used here.
- The decoder normalizes u(l) with u's own batch statistics, without learned parameters and
  without running averages, in training and evaluation alike (Algorithm 1; the combinator's
  a1..a10 provide the affine part). Evaluation-mode reconstructions therefore depend on the
  batch, like the training ones.
- In evaluation (`train=False`) there is no corruption: the "corrupted" path is the clean one
  (running statistics, no noise), so `logits_corrupted == logits_clean` and the decoder denoises
  the clean z(l). The classifier at test time is the clean path (Rasmus et al., Algorithm 1's
  clean encoder gives the prediction y; their code reports the clean path's error rate).
- Weights are drawn from N(0, 1/fan_in) without biases (beta plays the bias), and a2 = a7 = 1,
  the other a's 0, as in Rasmus et al.'s released code; App. C's N(0, 0.002) init belongs to
  the EBGAN auto-encoders, not to this borrowed architecture.
- Rasmus et al.'s code normalizes the labelled and unlabelled parts of a minibatch with separate
  statistics. This module normalizes whatever batch it is given as one; call it once per part
  to get their behaviour.
- The corruption is added in units of x: `noise_std` = 0.3 is Rasmus et al.'s value for pixel
  intensities in [0, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ebgan_jax.models import mlp

if TYPE_CHECKING:
  import ml_collections

# Rasmus et al.'s code: W ~ randn(fan_in, fan_out) / sqrt(fan_in), for encoder and decoder.
KERNEL_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')
# Rasmus et al. (2015), Sec. 4: Gaussian corruption noise of std 0.3 on MNIST (also the
# default input and per-layer noise of their code).
NOISE_STD = 0.3
# App. D / Rasmus et al., Sec. 4: 784-1000-500-250-250-250 plus the 10-way softmax layer.
MNIST_WIDTHS = (1000, 500, 250, 250, 250, 10)


def batch_normalize(x: jax.Array, epsilon: float = mlp.BN_EPSILON) -> jax.Array:
  """(x - batch mean) / sqrt(batch variance + eps) per unit, no learned parameters.

  The `batchnorm` of Rasmus et al.'s Algorithm 1 for the corrupted encoder and the decoder.

  Args:
    x: activations, shape [B, N].
    epsilon: added to the variance; the same as the clean path's `nn.BatchNorm`.
  Returns:
    Shape [B, N].
  """
  mean = jnp.mean(x, axis=0, keepdims=True)  # [1, N]
  var = jnp.var(x, axis=0, keepdims=True)    # [1, N]
  return (x - mean) * jax.lax.rsqrt(var + epsilon)


class Combinator(nn.Module):
  """Rasmus et al.'s denoising function g(z~, u), Eq. (2) and Algorithm 1, one per layer.

  Per unit i, with ten learned vectors a1..a10 of the layer's width:
    mu(u) = a1 * sigmoid(a2 * u + a3) + a4 * u + a5
    v(u)  = a6 * sigmoid(a7 * u + a8) + a9 * u + a10
    z^    = (z~ - mu(u)) * v(u) + mu(u)
  Pezeshki et al. (2015) call this the "Gaussian" combinator; the ladder literature also calls it
  the vanilla (Rasmus) one. Initialised with a2 = a7 = 1 and the rest 0 (Rasmus et al.'s code).
  """

  @nn.compact
  def __call__(self, z_corrupted: jax.Array, u: jax.Array) -> jax.Array:
    """Maps z~ [B, N] (lateral) and u [B, N] (top-down) to the estimate z^ [B, N]."""
    width = z_corrupted.shape[-1]

    def vector(name: str, value: float) -> jax.Array:
      return self.param(name, nn.initializers.constant(value), (width,))

    a = {i: vector(f'a{i}', 1.0 if i in (2, 7) else 0.0) for i in range(1, 11)}
    mu = a[1] * jax.nn.sigmoid(a[2] * u + a[3]) + a[4] * u + a[5]  # [B, N]
    v = a[6] * jax.nn.sigmoid(a[7] * u + a[8]) + a[9] * u + a[10]  # [B, N]
    return (z_corrupted - mu) * v + mu


class LadderNetwork(nn.Module):
  """Bottom-layer-cost Ladder Network (App. D; Rasmus et al., 2015, Algorithm 1).

  `widths` lists the encoder's layer sizes above the input, the last one being the number of
  classes; `input_dim` is the flat input's size (784 for MNIST). Parameters: encoder kernels
  `enc_dense_{l}` and gamma-free BNs `enc_bn_{l}` (bias beta and running statistics only) for
  l = 1..L; decoder kernels `dec_dense_{l}` (V(l+1), from layer l+1 down to layer l) for
  l = 0..L-1; combinators `combinator_{l}` for l = 0..L. The corrupted path draws its noise
  from the `'noise'` RNG stream, only when `train` is True and `noise_std > 0`.

  `__call__` runs the three paths. They are also methods of their own (`clean_encoder`,
  `corrupted_encoder`, `decoder`, through `apply(..., method=...)`), so that a training step
  can run each path on the batches that need it, e.g. the decoder only on batches whose
  reconstruction enters a loss, and several batches through one path at once (`jax.vmap`
  over them, each normalized with its own statistics) with the same arithmetic as one call
  per batch.
  """
  widths: Sequence[int] = MNIST_WIDTHS
  noise_std: float = NOISE_STD
  input_dim: int = 784

  def setup(self):
    dims = self.dims
    top = len(self.widths)
    self.enc_dense = {l: nn.Dense(dims[l], use_bias=False, kernel_init=KERNEL_INIT)
                      for l in range(1, top + 1)}
    # App. D: BN without gamma; its bias is Rasmus et al.'s beta(l). The running statistics
    # are the clean path's (`mlp.batch_norm`'s momentum and epsilon; train or test per call).
    self.enc_bn = {l: nn.BatchNorm(momentum=mlp.BN_MOMENTUM, epsilon=mlp.BN_EPSILON,
                                   use_scale=False)
                   for l in range(1, top + 1)}
    self.dec_dense = {l: nn.Dense(dims[l], use_bias=False, kernel_init=KERNEL_INIT)
                      for l in range(top)}
    self.combinator = {l: Combinator() for l in range(top + 1)}

  @property
  def dims(self) -> tuple[int, ...]:
    """dims[l] = width of layer l, l = 0..L (dims[0] = input_dim)."""
    return (self.input_dim, *self.widths)

  def _activation(self, pre: jax.Array, l: int) -> jax.Array:
    # ReLU below the top; the top keeps its logits, the softmax is applied by the caller.
    return pre if l == len(self.widths) else nn.relu(pre)

  def _beta(self, l: int) -> jax.Array:
    return self.enc_bn[l].variables['params']['bias']  # [dims[l]]

  def _flatten(self, x: jax.Array) -> jax.Array:
    x_flat = x.reshape(x.shape[0], -1).astype(jnp.float32)  # [B, D]
    if x_flat.shape[-1] != self.input_dim:
      raise ValueError(f'The Ladder Network was built for {self.input_dim} inputs but got '
                       f'{x_flat.shape[-1]}; set its input_dim (from_config: image_size**2 '
                       '* channels).')
    return x_flat

  def clean_encoder(self, x: jax.Array, *, train: bool
                    ) -> tuple[jax.Array, list[jax.Array]]:
    """Clean encoder: z(l) + beta(l) = BN(W(l) h(l-1)), h(l) = ReLU(z(l) + beta(l)).

    With `train`, BN uses the batch's statistics and updates the running ones (the test-time
    classifier's); without, it uses the running ones.

    Args:
      x: images [B, H, W, C] or flat [B, D].
    Returns:
      (logits_clean [B, K], [z(0) = x, z(1), ..., z(L)] with z(l) of shape [B, dims[l]]).
    """
    h = x_flat = self._flatten(x)
    z_clean = [x_flat]  # z(0) = x
    for l in range(1, len(self.widths) + 1):
      z_plus_beta = self.enc_bn[l](self.enc_dense[l](h), use_running_average=not train)
      z_clean.append(z_plus_beta - self._beta(l))
      h = self._activation(z_plus_beta, l)
    return h, z_clean

  def corrupted_encoder(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """Corrupted encoder, the clean one's weights: z~(l) = NB(W(l) h~(l-1)) + noise.

    NB normalizes with the batch's own statistics; the noise is N(0, noise_std^2) from the
    'noise' RNG stream (none when noise_std is 0). Training only.

    Args:
      x: images [B, H, W, C] or flat [B, D].
    Returns:
      (logits_corrupted [B, K], [z~(0) = x + noise, z~(1), ..., z~(L)]).
    """
    x_flat = self._flatten(x)
    noise_key = self.make_rng('noise') if self.noise_std > 0 else None

    def corrupt(z: jax.Array, l: int) -> jax.Array:
      if noise_key is None:
        return z
      return z + self.noise_std * jax.random.normal(jax.random.fold_in(noise_key, l), z.shape)

    h = corrupt(x_flat, 0)
    z_corrupted = [h]  # z~(0) = x + noise
    for l in range(1, len(self.widths) + 1):
      z = corrupt(batch_normalize(self.enc_dense[l](h)), l)  # [B, dims[l]]
      z_corrupted.append(z)
      h = self._activation(z + self._beta(l), l)
    return h, z_corrupted

  def decoder(self, z_lateral: Sequence[jax.Array], logits: jax.Array) -> jax.Array:
    """Decoder: u(L) = NB(softmax(logits)), u(l) = NB(V(l+1) z^(l+1)); z^(l) = g(z(l), u(l)).

    Args:
      z_lateral: the encoder's [z(0), ..., z(L)] (the corrupted ones in training).
      logits: that encoder's top output [B, K].
    Returns:
      z^(0), the flat reconstruction [B, D].
    """
    top = len(self.widths)
    u = batch_normalize(jax.nn.softmax(logits))  # [B, K]
    z_hat = None
    for l in range(top, -1, -1):
      if l < top:
        u = batch_normalize(self.dec_dense[l](z_hat))  # [B, dims[l]]
      z_hat = self.combinator[l](z_lateral[l], u)  # [B, dims[l]]
    return z_hat

  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    """Runs the clean encoder, the corrupted encoder and the decoder.

    Args:
      x: images [B, H, W, C] or flat [B, D] (D = input_dim).
      train: batch statistics (updating the clean BN's running ones) and corruption noise
        when True; running statistics and no noise when False.
    Returns:
      A dict with
        logits_clean:     [B, K], the clean path's pre-softmax output (the test classifier);
        logits_corrupted: [B, K], the corrupted path's (the training classifier);
        x_rec:            same shape as x, the decoder's bottom layer z^(0).
    """
    logits_clean, z_clean = self.clean_encoder(x, train=train)
    if train:
      logits_corrupted, z_corrupted = self.corrupted_encoder(x)
    else:
      z_corrupted, logits_corrupted = z_clean, logits_clean
    # z^(0) is compared with x directly (no BN at layer 0).
    x_rec = self.decoder(z_corrupted, logits_corrupted).reshape(x.shape)
    return {'logits_clean': logits_clean, 'logits_corrupted': logits_corrupted, 'x_rec': x_rec}


def from_config(config: ml_collections.ConfigDict) -> LadderNetwork:
  """The Ladder Network of `config.model.ladder_widths` and `config.model.noise_std` on
  images of `config.image_size` squared times `config.channels` pixels."""
  return LadderNetwork(widths=tuple(config.model.ladder_widths),
                       noise_std=config.model.noise_std,
                       input_dim=config.image_size ** 2 * config.get('channels', 1))
