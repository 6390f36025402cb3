"""Semi-supervised PI-MNIST: the Ladder Network baseline and EBGAN-LN (Sec. 4.2, App. D).

One pure train step, `Trainer.train_step(state, labelled_batch, unlabelled_batch, key)`:

- Ladder (App. D, "Baseline model"): D's loss is
    class_weight * CE(corrupted logits of the labelled batch, labels)
    + lambda_L2 * mean over the unlabelled batch of ||x_rec - x||^2
  (the bottom-layer "vanilla form of l2 loss" of App. D, `losses.squared_l2_energy`).
- EBGAN-LN (App. D, "EBGAN-LN model"): the Ladder Network is EBGAN's discriminator and its
  per-sample bottom-layer reconstruction cost the energy. D's loss adds the hinge of Eq. (1) on
  generated samples, hinge_weight * mean [m - D(G(z))]^+, with m decaying linearly from 16 to 0
  over the first third of the run (`losses.margin_at`); G then minimises Eq. (2),
  mean D(G(z)) under the *updated* D. From `generator_off_step` on (when m has reached 0),
  G is no longer trained and no samples are generated: the step is the Ladder's.

The Ladder Network sees pixels in `config.pixel_range`: (0, 1) maps the project's [-1, 1]
images and G's tanh output by x -> (x + 1) / 2 (configs/mnist_ssl.py says why). The labelled,
unlabelled and generated batches are each normalized with their own batch statistics, as in
Rasmus et al.'s code.

This module is the state, the step and the test error; `ebgan_jax.ssl_train` is the loop of
one run, `ebgan_jax.ssl_population` trains many runs in one program.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optax.losses

from ebgan_jax import losses, models, sharding, step as step_lib
from ebgan_jax.models import ladder

Metrics = dict[str, jax.Array]
LabelledBatch = tuple[jax.Array, jax.Array]  # (images [B, H, W, C] in [-1, 1], labels [B])


@flax.struct.dataclass
class SSLState:
  """The whole training state, one pytree (orbax saves it, `ssl_population` stacks it)."""
  step: jax.Array                  # int32 scalar: number of completed train steps.
  d: step_lib.Player               # The Ladder Network (EBGAN-LN's discriminator).
  g: step_lib.Player | None        # EBGAN-LN's generator; None for the plain Ladder.


class Trainer:
  """Binds an SSL config (configs/mnist_ssl.py) to its models, optimizers and pure step."""

  def __init__(self, config: ml_collections.ConfigDict, total_steps: int | None = None):
    self.config = config
    self.total_steps = total_steps or config.total_steps
    self.is_ebgan = config.loss.kind == 'ebgan'
    if config.loss.kind not in ('ebgan', 'none'):
      raise ValueError(f"An SSL config's loss.kind is 'ebgan' (EBGAN-LN) or 'none' (Ladder), "
                       f'got {config.loss.kind!r}.')
    self.ladder: nn.Module = ladder.from_config(config)
    self.generator: nn.Module | None = (models.get_generator(config) if self.is_ebgan
                                        else None)
    # App. D: Adam, beta1 = 0.5, linear decay to 0 from optim.lr_decay_start (2/3 of the run).
    self.d_tx = step_lib.make_optimizer(config.optim.optim_d, config.optim.lr_d, config,
                                        self.total_steps)
    self.g_tx = step_lib.make_optimizer(config.optim.optim_g, config.optim.lr_g, config,
                                        self.total_steps)
    self.image_shape = models.image_shape(config)
    step_lib.matmul_precision(config)  # Fails here, with the allowed values, not in a step.
    self._jit_predict = None

  # -- state ----------------------------------------------------------------------------------
  def create_state(self, key: jax.Array) -> SSLState:
    """Initial state from `key` (the Ladder's initialisation follows Rasmus et al.'s code)."""
    g_key, d_key = jax.random.split(key)
    x = jnp.zeros((2, *self.image_shape), jnp.float32)
    d_vars = self.ladder.init({'params': d_key, 'noise': d_key}, x, train=False)
    d = step_lib.Player(d_vars['params'], d_vars['batch_stats'], self.d_tx.init(d_vars['params']))
    g = None
    if self.is_ebgan:
      z = jnp.zeros((2, self.config.model.latent_dim), jnp.float32)
      g_vars = self.generator.init({'params': g_key, 'noise': g_key}, z, train=False)
      g = step_lib.Player(g_vars['params'], g_vars.get('batch_stats', {}),
                          self.g_tx.init(g_vars['params']))
    return SSLState(step=jnp.int32(0), d=d, g=g)

  def margin(self, step: jax.Array | int) -> jax.Array:
    """m at `step`: App. D's linear decay from 16 to 0 (0 for the plain Ladder)."""
    return losses.margin_at(step, self.config.loss.margin, self.config.loss.margin_decay_steps)

  def to_ladder_pixels(self, x: jax.Array) -> jax.Array:
    """[-1, 1] images -> the Ladder's pixel range (config.pixel_range; (0, 1) in App. D)."""
    low, high = self.config.pixel_range
    return low + (x + 1.0) * (0.5 * (high - low))

  def sample_latents(self, key: jax.Array, num: int) -> jax.Array:
    """z ~ N(0, I), shape [num, latent_dim]."""
    return jax.random.normal(key, (num, self.config.model.latent_dim), jnp.float32)

  def generate(self, g_params: Any, g_batch_stats: Any, z: jax.Array) -> jax.Array:
    """G(z) in inference mode, images [B, H, W, C] in [-1, 1] (for sample grids)."""
    return self.generator.apply({'params': g_params, 'batch_stats': g_batch_stats}, z,
                                train=False, rngs={'noise': jax.random.key(0)})

  # -- the step -------------------------------------------------------------------------------
  # The Ladder's three paths run separately (`LadderNetwork`'s methods), each on the batches
  # that need it: the clean path (forward only: its batch statistics become the test-time
  # running ones) on the labelled and unlabelled batches in turn; the corrupted encoder on
  # the labelled, unlabelled and generated batches; the decoder on the unlabelled and
  # generated ones (the labelled batch's reconstruction enters no loss). Batches of one shape
  # go through a path together (`_each_batch`), each with its own statistics and noise.

  def _clean_statistics(self, params, batch_stats, batches: list[jax.Array]):
    """The running statistics after the clean path has seen `batches`, in order (train mode:
    each normalized with its own statistics, updating the running ones)."""
    for x in batches:
      _, updates = self.ladder.apply({'params': params, 'batch_stats': batch_stats}, x,
                                     train=True, method='clean_encoder', mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
    return batch_stats

  def _corrupted(self, params, x, key):
    """(logits~ [B, K], laterals z~(0..L)) of the corrupted encoder on pixels x [B, ...]."""
    return self.ladder.apply({'params': params}, x, method='corrupted_encoder',
                             rngs={'noise': key})

  def _clean(self, params, batch_stats, x):
    """(logits, laterals z(0..L)) of the clean path with running statistics (no noise)."""
    return self.ladder.apply({'params': params, 'batch_stats': batch_stats}, x, train=False,
                             method='clean_encoder')

  def _decode(self, params, encoded):
    """x_rec [B, D] (flat) from an encoder's (logits, laterals)."""
    logits, laterals = encoded
    return self.ladder.apply({'params': params}, laterals, logits, method='decoder')

  def _energy(self, params, batch_stats, x, key, train: bool) -> jax.Array:
    """Per-sample energy [B] of pixels x: the corrupted path's reconstruction cost (`train`),
    or the clean path's with running statistics."""
    encoded = self._corrupted(params, x, key) if train else self._clean(params, batch_stats, x)
    return losses.squared_l2_energy(x.reshape(x.shape[0], -1), self._decode(params, encoded))

  def train_step(self, state: SSLState, labelled_batch: LabelledBatch,
                 unlabelled_batch: jax.Array, key: jax.Array,
                 batch_sharding: jax.sharding.Sharding | None = None,
                 generator_on: bool | None = None) -> tuple[SSLState, Metrics]:
    """One D update (and, for EBGAN-LN while step < generator_off_step, one G update).

    Args:
      state: the current state.
      labelled_batch: (images [B_l, H, W, C] in [-1, 1], int labels [B_l]).
      unlabelled_batch: images [B, H, W, C] in [-1, 1].
      key: the run's train key; the step's randomness is `fold_in(key, state.step)`.
      batch_sharding: when given, z and G(z) are constrained to it (data parallel).
      generator_on: None: from the step (`lax.cond` on step < generator_off_step); True or
        False: that step's program alone, for a caller that knows the step's phase (a
        population of members at one step: under `vmap` a `cond` on each member's step
        would run both branches).
    Returns:
      The new state and scalar metrics (the same keys whether G is on or off).
    """
    with step_lib.matmul_precision(self.config):  # config.matmul_precision, as the GAN step.
      if not self.is_ebgan or generator_on is not None:
        return self._step(state, labelled_batch, unlabelled_batch, key, batch_sharding,
                          bool(self.is_ebgan and generator_on))
      return jax.lax.cond(
          state.step < self.config.generator_off_step,
          lambda s: self._step(s, labelled_batch, unlabelled_batch, key, batch_sharding, True),
          lambda s: self._step(s, labelled_batch, unlabelled_batch, key, batch_sharding, False),
          state)

  def _step(self, state: SSLState, labelled_batch: LabelledBatch, unlabelled_batch: jax.Array,
            key: jax.Array, batch_sharding: jax.sharding.Sharding | None, generator_on: bool
            ) -> tuple[SSLState, Metrics]:
    """The step with G on (EBGAN-LN before the switch-off) or off (Ladder; EBGAN-LN after)."""
    cfg = self.config
    key = jax.random.fold_in(key, state.step)
    lab_key, unl_key, fake_key, z_key, g_noise_key, g_d_key = jax.random.split(key, 6)
    x_lab = self.to_ladder_pixels(labelled_batch[0])   # [B_l, H, W, C]
    labels = labelled_batch[1]                          # [B_l]
    x_unl = self.to_ladder_pixels(unlabelled_batch)     # [B, H, W, C]
    margin = self.margin(state.step)
    fake_train = cfg.ssl.fake_through_corrupted

    if generator_on:
      z = self.sample_latents(z_key, unlabelled_batch.shape[0])  # [B, latent]
      if batch_sharding is not None:
        z = jax.lax.with_sharding_constraint(z, batch_sharding)

      x_fake, g_vjp, g_batch_stats = step_lib.generate_with_vjp(
          self.generator, state.g, z, g_noise_key)
      x_fake_pix = self.to_ladder_pixels(x_fake)  # [B, H, W, C]

    # The clean path's running statistics (the test classifier's): labelled, then unlabelled
    # (then generated, with fake_updates_batch_stats) batch; forward only.
    d_batch_stats = self._clean_statistics(
        state.d.params, state.d.batch_stats,
        [x_lab, x_unl] + ([x_fake_pix] if generator_on and fake_train
                          and cfg.ssl.fake_updates_batch_stats else []))

    # Discriminator update; G(z) is a constant here.
    def d_objective(d_params):
      corrupted_in, keys = [x_lab, x_unl], [lab_key, unl_key]
      if generator_on and fake_train:
        corrupted_in, keys = corrupted_in + [x_fake_pix], keys + [fake_key]
      encoded = _each_batch(functools.partial(self._corrupted, d_params), corrupted_in, keys)
      if generator_on and not fake_train:  # Clean path, the running statistics after x_unl.
        real_stats = self._clean_statistics(d_params, state.d.batch_stats, [x_lab, x_unl])
        encoded.append(self._clean(d_params, real_stats, x_fake_pix))
      logits_lab = encoded[0][0]  # [B_l, K], corrupted
      x_rec = _each_batch(functools.partial(self._decode, d_params), encoded[1:])
      ce = jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(logits_lab, labels))
      e_real = losses.squared_l2_energy(x_unl.reshape(x_rec[0].shape), x_rec[0])  # [B]
      loss = cfg.loss.class_weight * ce + cfg.loss.recon_weight * jnp.mean(e_real)
      aux = {'ce_loss': ce, 'energy_real': jnp.mean(e_real),
             'train_error': jnp.mean(jnp.argmax(logits_lab, -1) != labels)}
      if generator_on:
        e_fake = losses.squared_l2_energy(x_fake_pix.reshape(x_rec[1].shape), x_rec[1])  # [B]
        hinge = jnp.mean(jax.nn.relu(margin - e_fake))  # Eq. (1)'s second term, per sample.
        loss = loss + cfg.loss.hinge_weight * hinge
        aux |= {'energy_fake': jnp.mean(e_fake), 'hinge': hinge}
      else:
        aux |= {'energy_fake': jnp.float32(0.0), 'hinge': jnp.float32(0.0)}
      return loss, aux

    (d_loss, d_aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(state.d.params)
    # The clean pass read the old weights too: the in-place update comes after it.
    d_params, d_opt_state = step_lib.apply_optimizer(self.d_tx, state.d, d_grads,
                                                     after=d_batch_stats)
    new_d = step_lib.Player(d_params, d_batch_stats, d_opt_state)

    metrics = {'d_loss': d_loss, **d_aux}
    grad_norms = cfg.get('grad_norm_metrics', False)
    if grad_norms:
      metrics['d_grad_norm'] = step_lib.global_norm(d_grads)
    if not self.is_ebgan:
      return SSLState(step=state.step + 1, d=new_d, g=None), metrics
    metrics['margin'] = margin

    if not generator_on:  # After the switch-off: G and its optimizer are left as they are.
      metrics |= {'g_loss': jnp.float32(0.0), 'generator_on': jnp.float32(0.0)}
      if grad_norms:
        metrics['g_grad_norm'] = jnp.float32(0.0)
      return SSLState(step=state.step + 1, d=new_d, g=state.g), metrics

    # Generator update, Eq. (2): mean energy of G(z) under the updated D (its running
    # statistics untouched).
    def g_objective(x_fake_images):
      return losses.g_loss(self._energy(d_params, d_batch_stats,
                                        self.to_ladder_pixels(x_fake_images), g_d_key,
                                        fake_train))

    g_loss, dx = jax.value_and_grad(g_objective)(x_fake)
    (g_grads,) = g_vjp(dx)
    g_params, g_opt_state = step_lib.apply_optimizer(self.g_tx, state.g, g_grads)
    metrics |= {'g_loss': g_loss, 'generator_on': jnp.float32(1.0)}
    if grad_norms:
      metrics['g_grad_norm'] = step_lib.global_norm(g_grads)
    new_g = step_lib.Player(g_params, g_batch_stats, g_opt_state)
    return SSLState(step=state.step + 1, d=new_d, g=new_g), metrics

  # -- evaluation -----------------------------------------------------------------------------
  def predict(self, d_params: Any, d_batch_stats: Any, images: jax.Array) -> jax.Array:
    """Clean-path class predictions [B] for images [B, H, W, C] in [-1, 1]."""
    out = self.ladder.apply({'params': d_params, 'batch_stats': d_batch_stats},
                            self.to_ladder_pixels(images), train=False)
    return jnp.argmax(out['logits_clean'], axis=-1)

  def evaluate(self, state: SSLState, images: np.ndarray, labels: np.ndarray,
               batch_size: int | None = None) -> float:
    """Error rate (a fraction) of the clean path on (images [N, H, W, C], labels [N]).

    The clean path uses running BN statistics, so each example's prediction is independent of
    its batch; the last batch is zero-padded and its padding ignored.
    """
    if self._jit_predict is None:  # One program for every evaluation of this trainer.
      self._jit_predict = jax.jit(self.predict)
    predicted = predict_in_batches(
        lambda chunk: self._jit_predict(state.d.params, state.d.batch_stats, chunk),
        images, batch_size or self.config.ssl.eval_batch_size)
    return float(np.mean(predicted != np.asarray(labels)))


def predict_in_batches(predict: Callable[[np.ndarray], jax.Array], images: np.ndarray,
                       batch_size: int) -> np.ndarray:
  """predict(chunk)[..., :real] over `images` [N, ...] in chunks of `batch_size` (the last one
  zero-padded, its padding dropped), concatenated along the last axis: [..., N]."""
  out = []
  for start in range(0, images.shape[0], batch_size):
    chunk = images[start:start + batch_size]
    real = chunk.shape[0]
    if real < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]),
                                              chunk.dtype)])
    out.append(np.asarray(predict(chunk))[..., :real])
  return np.concatenate(out, axis=-1)


def _each_batch(fn: Callable, *per_batch: list) -> list:
  """[fn(*args) for args in zip(*per_batch)]: one `jax.vmap`ped call when every batch's
  arguments have the same shapes (the Ladder's App. D batches of 100), else one call each.

  A Ladder path vmapped over batches computes what one call per batch computes -- each batch
  normalized with its own statistics, its noise drawn from its own key -- with each weight
  in one matrix product over all the batches (and one weight gradient, instead of a sum of
  per-batch ones) and each noise draw in one call (BENCHMARKS.md, CPU).
  """
  args = list(zip(*per_batch))
  shapes = {str(jax.tree.map(lambda a: (a.shape, a.dtype), a)) for a in args}
  if len(args) < 2 or len(shapes) > 1:
    return [fn(*a) for a in args]
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *args)
  out = jax.vmap(fn)(*stacked)
  return [jax.tree.map(lambda leaf, i=i: leaf[i], out) for i in range(len(args))]


def jit_train_step(trainer: Trainer, mesh: jax.sharding.Mesh
                   ) -> Callable[[SSLState, LabelledBatch, jax.Array, jax.Array],
                                 tuple[SSLState, Metrics]]:
  """`trainer.train_step` compiled over `mesh`: batches split on 'data', state replicated.

  The input state's buffers are donated.
  """
  batch = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  def step_fn(state, labelled_batch, unlabelled_batch, key):
    return trainer.train_step(state, labelled_batch, unlabelled_batch, key,
                              batch_sharding=batch)

  return jax.jit(step_fn, in_shardings=(repl, (batch, batch), batch, repl),
                 out_shardings=(repl, repl), donate_argnums=0)


def jit_train_steps(trainer: Trainer, mesh: jax.sharding.Mesh
                    ) -> Callable[[SSLState, LabelledBatch, jax.Array, jax.Array],
                                  tuple[SSLState, Metrics]]:
  """K train steps per call: `trainer.train_step` scanned over batches stacked [K, B, ...].

  The same steps as K calls of `jit_train_step` (step i trains on the i-th batches; each
  step's randomness is still `fold_in(key, step)`), with the metrics stacked [K]. The host
  work around a call (dispatch, drawing the next batches) is paid once per K steps.
  Input state donated.
  """
  batch = sharding.batch_sharding(mesh)
  stacked = sharding.stacked_batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  def steps(state, labelled_batches, unlabelled_batches, key):
    def one(state, batches):
      labelled, unlabelled = batches
      return trainer.train_step(state, labelled, unlabelled, key, batch_sharding=batch)
    return jax.lax.scan(one, state, (labelled_batches, unlabelled_batches))

  return jax.jit(steps, in_shardings=(repl, (stacked, stacked), stacked, repl),
                 out_shardings=(repl, repl), donate_argnums=0)
