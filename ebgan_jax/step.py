"""Train state and the pure train step: one discriminator update, then one generator update.

The state is one pytree (`TrainState`): each player's params, BatchNorm statistics and optax
state, the step counter, and the per-run hyper-parameters that a population of runs may vary
(`margin`, `pt_weight`; learning rates live in the optax states through
`optax.inject_hyperparams`), and, when `config.ema_decay` > 0, an exponential moving average
of G's params (`g_ema`, beyond the paper; used for samples). orbax saves it as is, `jax.vmap`
stacks it (population training), and `train_step(state, batch, key) -> (state, metrics)` is a
pure function of it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, ContextManager

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ebgan_jax import losses, models, sharding

Metrics = dict[str, jax.Array]

# `config.matmul_precision` values; see `matmul_precision`.
MATMUL_PRECISIONS = ('default', 'tensorfloat32', 'bfloat16', 'float32', 'highest')


def matmul_precision(config: ml_collections.ConfigDict) -> ContextManager[None]:
  """The context in which the train step is traced: `config.matmul_precision` for fp32 dots.

  A speed option that changes the numerics (the paper trained in fp32). 'default' sets
  nothing: JAX's default, which every result so far used; per JAX's documentation it may
  already compute fp32 dots with TF32 on recent NVIDIA GPUs (bf16 passes on TPU).
  'float32'/'highest' force full fp32 passes (Precision.HIGHEST), 'tensorfloat32' asks for
  TF32 tensor cores (Precision.HIGH), and 'bfloat16' is JAX's legacy name for an explicit
  Precision.DEFAULT, which lowers to the same HLO as 'default' in jax 0.10 (the tests check
  the lowered precisions). JAX resolves the precision of each dot when it is traced, so
  entering this context around the step's body reaches every matmul of the step, also under
  `vmap`, `scan` and `jit`, and leaves nothing set outside it. Dots with an explicit
  precision (the scores' `Precision.HIGHEST`) are not affected.

  Raises:
    ValueError: for a value outside `MATMUL_PRECISIONS`.
  """
  value = config.get('matmul_precision', 'default')
  if value not in MATMUL_PRECISIONS:
    raise ValueError(f'Unknown config.matmul_precision {value!r}; use one of '
                     f'{MATMUL_PRECISIONS}.')
  if value == 'default':
    return contextlib.nullcontext()
  return jax.default_matmul_precision(value)


@flax.struct.dataclass
class Player:
  """One player's (G's or D's) trainable state."""
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: number of completed train steps.
  g: Player
  d: Player
  hparams: dict[str, jax.Array]  # {'margin': m at step 0, 'pt_weight': lambda_PT}.
  g_ema: Any = None    # EMA of g.params when config.ema_decay > 0, else None (no leaves).


def adam_or_sgd(learning_rate: float, b1: float, b2: float, adam: float
                ) -> optax.GradientTransformation:
  """`optax.adam(learning_rate, b1, b2)` where `adam` is 1, `optax.sgd(learning_rate)` where 0.

  One optimizer-state structure for a population whose members mix Adam and SGD
  (`ebgan_jax.padding`): Adam's moments are kept for every member (an SGD member's go
  unused) and `adam`, an injected hyper-parameter, selects each member's update. The same
  transforms as optax's: Adam's scaling, then -learning_rate.
  """
  scale_by_adam = optax.scale_by_adam(b1=b1, b2=b2)

  def update(grads, state, params=None):
    scaled, state = scale_by_adam.update(grads, state, params)
    return jax.tree.map(lambda a, g: jnp.where(adam > 0.5, a, g), scaled, grads), state

  return optax.chain(optax.GradientTransformation(scale_by_adam.init, update),
                     optax.scale_by_learning_rate(learning_rate))


def make_optimizer(name: str, learning_rate: float, config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Adam or plain SGD (Table 1's optimD/optimG), with an optional linear decay to 0.

  The learning rate is an injected hyper-parameter (it lives in the optimizer state, so a
  population of runs can hold different rates); the decay of App. D (linear to 0 from
  `config.optim.lr_decay_start` to the last step) multiplies the updates. 'adam_or_sgd' is
  `adam_or_sgd`, for padded populations that mix both (its `adam` flag is set per member).
  """
  if name == 'adam':
    base = optax.inject_hyperparams(optax.adam)(
        learning_rate=learning_rate, b1=config.optim.b1, b2=config.optim.b2)
  elif name == 'sgd':
    base = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
  elif name == 'adam_or_sgd':
    base = optax.inject_hyperparams(adam_or_sgd)(
        learning_rate=learning_rate, b1=config.optim.b1, b2=config.optim.b2, adam=1.0)
  else:
    raise ValueError(f"Unknown optimizer {name!r}; config.optim.optim_d/optim_g must be "
                     "'adam' or 'sgd'.")
  start = config.optim.get('lr_decay_start', 0)
  if start <= 0:
    return base
  decay = optax.linear_schedule(1.0, 0.0, transition_steps=max(total_steps - start, 1),
                                transition_begin=start)
  return optax.chain(base, optax.scale_by_schedule(decay))


def generate_with_vjp(generator: nn.Module, g: Player, z: jax.Array, noise_key: jax.Array):
  """G(z) in train mode, its VJP with respect to G's params, and G's updated BN statistics.

  G(z) is computed once per step: the D update uses it as a constant and the G update pulls
  its loss gradient (taken under the updated D) back through the returned VJP.

  Returns:
    (x_fake [B, H, W, C], vjp: cotangent of x_fake -> (grads of G's params,), batch_stats).
  """
  def forward(g_params):
    x_fake, updates = generator.apply(
        {'params': g_params, 'batch_stats': g.batch_stats}, z, train=True,
        rngs={'noise': noise_key}, mutable=['batch_stats'])
    return x_fake, updates.get('batch_stats', g.batch_stats)

  return jax.vjp(forward, g.params, has_aux=True)


class Trainer:
  """Binds a config to its models and optimizers; builds states and runs the pure step."""

  def __init__(self, config: ml_collections.ConfigDict, total_steps: int = 1):
    self.config = config
    self.generator: nn.Module = models.get_generator(config)
    self.discriminator: nn.Module = models.get_discriminator(config)
    self.g_tx = make_optimizer(config.optim.optim_g, config.optim.lr_g, config, total_steps)
    self.d_tx = make_optimizer(config.optim.optim_d, config.optim.lr_d, config, total_steps)
    self.is_ebgan = config.loss.kind == 'ebgan'
    self.image_shape = models.image_shape(config)
    # D sees real and fake in one pass when that is the arithmetic of two (`_d_forward_pair`).
    self.d_takes_pairs = not (self._d_has_batch_norm() or config.model.get('dropout_d', False))
    self.ema_decay = float(config.get('ema_decay', 0.0))
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f'config.ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}.')
    matmul_precision(config)  # Fails here, with the allowed values, not in the first step.

  def _d_has_batch_norm(self) -> bool:
    """Whether D keeps BatchNorm statistics (from its variables' shapes; nothing is run)."""
    x = jnp.zeros((2, *self.image_shape), jnp.float32)
    shapes = jax.eval_shape(lambda: self.discriminator.init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, x, train=False))
    return bool(jax.tree.leaves(shapes.get('batch_stats', {})))

  # -- state ----------------------------------------------------------------------------------
  def create_state(self, key: jax.Array) -> TrainState:
    """Initial state from `key` (App. C initialisation lives in the modules)."""
    g_key, d_key = jax.random.split(key)
    z = jnp.zeros((2, self.config.model.latent_dim), jnp.float32)
    x = jnp.zeros((2, *self.image_shape), jnp.float32)
    g_vars = self.generator.init({'params': g_key, 'noise': g_key}, z, train=False)
    d_vars = self.discriminator.init({'params': d_key, 'dropout': d_key}, x, train=False)
    g = Player(g_vars['params'], g_vars.get('batch_stats', {}),
               self.g_tx.init(g_vars['params']))
    d = Player(d_vars['params'], d_vars.get('batch_stats', {}),
               self.d_tx.init(d_vars['params']))
    hparams = {'margin': jnp.float32(self.config.loss.margin),
               'pt_weight': jnp.float32(self.config.loss.pt_weight)}
    g_ema = jax.tree.map(jnp.copy, g.params) if self.ema_decay else None
    return TrainState(step=jnp.int32(0), g=g, d=d, hparams=hparams, g_ema=g_ema)

  def sample_params(self, state: TrainState) -> Any:
    """G's params for samples and scores: the EMA when `config.ema_decay` > 0.

    The EMA params are used with G's current BatchNorm running statistics.
    """
    return state.g_ema if self.ema_decay else state.g.params

  def sample_latents(self, key: jax.Array, num: int) -> jax.Array:
    """z ~ N(0, I), shape [num, latent_dim] (Sec. 2: p_z, e.g. N(0, 1))."""
    return jax.random.normal(key, (num, self.config.model.latent_dim), jnp.float32)

  def generate(self, g_params: Any, g_batch_stats: Any, z: jax.Array,
               noise_key: jax.Array | None = None) -> jax.Array:
    """G(z) in inference mode (BatchNorm running statistics), images [B, H, W, C]."""
    rngs = {'noise': noise_key if noise_key is not None else jax.random.key(0)}
    return self.generator.apply({'params': g_params, 'batch_stats': g_batch_stats}, z,
                                train=False, rngs=rngs)

  @functools.cached_property
  def jit_generate(self) -> Callable[..., jax.Array]:
    """`generate`, jitted once per trainer (so repeated sampling, as every evaluation does,
    traces and compiles it once per batch shape)."""
    return jax.jit(self.generate)

  # -- the step -------------------------------------------------------------------------------
  def _d_forward(self, params, batch_stats, x, key, **kwargs):
    """D in train mode on one batch; returns (output, updated batch_stats).

    `kwargs` go to D's call: `dropout_on`, a member's own dropout switch in a padded
    population that mixes D with and without dropout (`ebgan_jax.padding`).
    """
    out, updates = self.discriminator.apply(
        {'params': params, 'batch_stats': batch_stats}, x, train=True,
        rngs={'dropout': key}, mutable=['batch_stats'], **kwargs)
    return out, updates.get('batch_stats', batch_stats)

  def _d_forward_pair(self, params, x_real, x_fake, key):
    """D in train mode on the real and the fake batch in one pass, for a D without BatchNorm.

    The two batches are interleaved into one of 2B samples (real i and fake i side by side,
    so a batch sharded over devices stays sharded with no data movement), and every Dense
    layer does one [2B, in] x [in, out] product whose weight gradient is one product over both
    batches, instead of two products whose gradients are then added. The arithmetic is that
    of two passes (D has no batch statistics to keep apart), with half the small matmuls and
    one pass fewer over each weight-sized gradient (BENCHMARKS.md, CPU). A D with BatchNorm
    must see the batches separately, each with its own statistics, as in DCGAN; so must a D
    with dropout, whose masks are drawn per batch.
    """
    b = x_real.shape[0]
    x = jnp.stack([x_real, x_fake], axis=1).reshape(2 * b, *x_real.shape[1:])
    out = self.discriminator.apply({'params': params}, x, train=True, rngs={'dropout': key})
    out = jax.tree.map(lambda o: o.reshape(b, 2, *o.shape[1:]), out)
    return jax.tree.map(lambda o: o[:, 0], out), jax.tree.map(lambda o: o[:, 1], out)

  def train_step(self, state: TrainState, batch: jax.Array, key: jax.Array,
                 batch_sharding: jax.sharding.Sharding | None = None
                 ) -> tuple[TrainState, Metrics]:
    """One D update (Eq. 1) then one G update (Eq. 2 + lambda_PT * Eq. 14) on one batch.

    G(z) is computed once; the D update treats it as a constant and the G update pulls the
    gradient of its loss, taken under the *updated* D, back through G's saved VJP.

    Args:
      state: the current state.
      batch: real images [B, H, W, C] in [-1, 1] (the global batch).
      key: the run's train key; the step's randomness is `fold_in(key, state.step)`, so a
        resumed run draws the same numbers.
      batch_sharding: when given, z and G(z) are constrained to it (data parallel).
    Returns:
      The new state and scalar metrics.
    """
    with matmul_precision(self.config):
      return self._train_step(state, batch, key, batch_sharding)

  def _train_step(self, state, batch, key, batch_sharding):
    cfg = self.config
    key = jax.random.fold_in(key, state.step)
    z_key, noise_key, drop_real, drop_fake, drop_g = jax.random.split(key, 5)
    z = self.sample_latents(z_key, batch.shape[0])  # [B, latent]
    if batch_sharding is not None:
      z = jax.lax.with_sharding_constraint(z, batch_sharding)

    x_fake, g_vjp, g_batch_stats = generate_with_vjp(self.generator, state.g, z, noise_key)
    margin = losses.margin_at(state.step, state.hparams['margin'], cfg.loss.margin_decay_steps)
    d_kwargs = {}
    if 'dropout_d' in state.hparams:  # A padded population mixing dropout and none.
      d_kwargs['dropout_on'] = state.hparams['dropout_d']

    # Discriminator update: G(z) is a constant here.
    def d_objective(d_params):
      if self.d_takes_pairs:  # The same arithmetic as two passes, in fewer.
        out_real, out_fake = self._d_forward_pair(d_params, batch, x_fake, drop_real)
        stats = state.d.batch_stats
      else:  # BatchNorm (or dropout): each batch its own statistics (masks).
        out_real, stats = self._d_forward(d_params, state.d.batch_stats, batch, drop_real,
                                          **d_kwargs)
        out_fake, stats = self._d_forward(d_params, stats, x_fake, drop_fake, **d_kwargs)
      if self.is_ebgan:
        e_real = losses.energy(batch, out_real[0])
        e_fake = losses.energy(x_fake, out_fake[0])
        loss = losses.d_loss(e_real, e_fake, margin)
        aux = {'energy_real': jnp.mean(e_real), 'energy_fake': jnp.mean(e_fake)}
      else:
        loss = losses.gan_d_loss(out_real, out_fake)
        aux = {'d_real': jnp.mean(jax.nn.sigmoid(out_real)),
               'd_fake': jnp.mean(jax.nn.sigmoid(out_fake))}
      return loss, (stats, aux)

    (d_loss, (d_batch_stats, d_aux)), d_grads = jax.value_and_grad(
        d_objective, has_aux=True)(state.d.params)
    d_params, d_opt_state = apply_optimizer(self.d_tx, state.d, d_grads)

    # Generator update, against the updated D (its running statistics are not touched here).
    def g_objective(x):
      out, _ = self._d_forward(d_params, d_batch_stats, x, drop_g, **d_kwargs)
      if self.is_ebgan:
        pt = losses.pulling_away_term(out[1])
        loss = losses.g_loss(losses.energy(x, out[0])) + state.hparams['pt_weight'] * pt
        return loss, {'pt': pt}
      return losses.gan_g_loss(out), {}

    (g_loss, g_aux), dx = jax.value_and_grad(g_objective, has_aux=True)(x_fake)
    (g_grads,) = g_vjp(dx)
    g_params, g_opt_state = apply_optimizer(self.g_tx, state.g, g_grads)
    g_ema = state.g_ema
    if self.ema_decay:  # g_ema <- d * g_ema + (1 - d) * g_params (the updated params).
      g_ema = jax.tree.map(lambda e, p: self.ema_decay * e + (1.0 - self.ema_decay) * p,
                           state.g_ema, g_params)

    new_state = TrainState(
        step=state.step + 1,
        g=Player(g_params, g_batch_stats, g_opt_state),
        d=Player(d_params, d_batch_stats, d_opt_state),
        hparams=state.hparams,
        g_ema=g_ema)
    metrics = {'d_loss': d_loss, 'g_loss': g_loss, **d_aux, **g_aux}
    if self.config.get('grad_norm_metrics', False):
      metrics |= {'d_grad_norm': global_norm(d_grads), 'g_grad_norm': global_norm(g_grads)}
    if self.is_ebgan:
      metrics['margin'] = margin
    return new_state, metrics


def global_norm(tree: Any) -> jax.Array:
  """sqrt(sum of squares) of every leaf: `optax.global_norm`, in one pass over each leaf.

  Each square is written |x| * |x| (the same number as x * x). Written as x * x, XLA:CPU
  shares the squared gradients with Adam's second-moment update, materialises them once and
  reads them back for both; as a distinct expression the squaring fuses into each consumer
  and the weight-sized squares are never written (BENCHMARKS.md, CPU).
  """
  return jnp.sqrt(sum(jnp.sum(jnp.abs(x) * jnp.abs(x)) for x in jax.tree.leaves(tree)))


def apply_optimizer(tx: optax.GradientTransformation, player: Player, grads: Any,
                    after: Any = None) -> tuple[Any, Any]:
  """One optax update of `player`'s params: (new params, new optimizer state).

  The params get `0 * g[0]` of every gradient g added: no value changes, but the update is
  ordered after the whole backward pass. The backward pass reads the old weights to
  propagate gradients; without that order XLA:CPU cannot prove those reads come before the
  update overwrites the donated weights in place, and copies each such weight matrix first:
  an extra pass over memory per weight in a step that is partly memory-bound on CPU
  (BENCHMARKS.md). One element per gradient makes the dependency without another pass over
  it (`lax.optimization_barrier` over params and gradients left two weights copied). A
  non-finite gradient makes the params non-finite, as its update would anyway (and the
  training loop stops on it). `after`: other results computed from the old params outside
  the backward pass (e.g. the Ladder's clean-path statistics), ordered before the update the
  same way.
  """
  zero = 0.0 * sum(g.ravel()[0] for g in jax.tree.leaves((grads, after)))
  params = jax.tree.map(lambda p: p + zero.astype(p.dtype), player.params)
  updates, opt_state = tx.update(grads, player.opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def jit_train_step(trainer: Trainer, mesh: jax.sharding.Mesh
                   ) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
  """`trainer.train_step` compiled over `mesh`: batch split on 'data', state replicated.

  The input state's buffers are donated (reused for the output state).
  """
  batch = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  def step(state, images, key):
    return trainer.train_step(state, images, key, batch_sharding=batch)

  return jax.jit(step, in_shardings=(repl, batch, repl), out_shardings=(repl, repl),
                 donate_argnums=0)


def jit_train_steps(trainer: Trainer, mesh: jax.sharding.Mesh
                    ) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, Metrics]]:
  """K train steps per call: `trainer.train_step` scanned over batches stacked [K, B, ...].

  The same steps as K calls of `jit_train_step` (step i trains on `images[i]`; each step's
  randomness is still `fold_in(key, step)`), with the metrics stacked [K]. A small step is
  bound by the host work around it (dispatch, the next batch): on a GPU the fully-connected
  step takes ~0.6 ms; score_sde's `n_jitted_steps` is the same device. Input state donated.
  """
  batch = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  def steps(state, images, key):
    def one(state, step_images):
      return trainer.train_step(state, step_images, key, batch_sharding=batch)
    return jax.lax.scan(one, state, images)

  return jax.jit(steps, in_shardings=(repl, sharding.stacked_batch_sharding(mesh), repl),
                 out_shardings=(repl, repl), donate_argnums=0)
