"""Tests of the train step: which gradient reaches which player, data parallelism, metrics.

The expected updates are computed here from the flax modules and the paper's equations
written out again in jnp (Eq. 1, 2, 13, 14), not through `ebgan_jax.losses` or the step.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_fc
from ebgan_jax import sharding, step

LATENT = 100
BATCH = 8


pytestmark = pytest.mark.usefixtures('fast_compiles_module')


def tiny_config(variant='ebgan_pt', optim='adam', lr_d=1e-3, lr_g=1e-3):
  config = mnist_fc.get_config(variant)
  config.model.size_g = config.model.size_d = 32
  config.model.n_layer_g = 2
  config.batch_size = BATCH
  config.optim.optim_d = config.optim.optim_g = optim
  config.optim.lr_d, config.optim.lr_g = lr_d, lr_g
  return config


def real_batch(seed=0):
  """Stand-in real images [B, 32, 32, 1] in [-1, 1]."""
  return np.random.RandomState(seed).uniform(-1, 1, (BATCH, 32, 32, 1)).astype(np.float32)


def to_numpy(tree):
  return jax.tree.map(np.asarray, tree)


# Eqs. (13), (1), (2), (14), written out independently of ebgan_jax.losses.
def ref_energy(x, x_rec):
  return jnp.sqrt(jnp.sum((x_rec - x) ** 2, axis=(1, 2, 3)))  # [B]: ||Dec(Enc(x)) - x||_2


def ref_pt(codes):
  """(1 / (N (N-1))) sum_{i != j} cos(S_i, S_j)^2 via explicit pair loops' vectorised form."""
  n = codes.shape[0]
  unit = codes / jnp.linalg.norm(codes, axis=1, keepdims=True)
  cos2 = (unit @ unit.T) ** 2
  return (jnp.sum(cos2) - jnp.trace(cos2)) / (n * (n - 1))


def step_z(train_key, step_number):
  """The step's latents: fold_in(train_key, step), first of 5 split keys (STYLE.md, RNG keys)."""
  z_key = jax.random.split(jax.random.fold_in(train_key, step_number), 5)[0]
  return jax.random.normal(z_key, (BATCH, LATENT), jnp.float32)


def first_fake_batch(trainer, state, train_key):
  """G(z) of the first step, computed independently of the step (train-mode G)."""
  z = step_z(train_key, 0)
  return trainer.generator.apply(
      {'params': state.g.params, 'batch_stats': state.g.batch_stats}, z, train=True,
      mutable=['batch_stats'])[0]


def test_d_update_holds_g_fixed_and_g_update_uses_updated_d():
  lr_d, lr_g, margin, pt_weight = 0.1, 0.05, 10.0, 0.1
  config = tiny_config('ebgan_pt', optim='sgd', lr_d=lr_d, lr_g=lr_g)
  assert config.loss.margin == margin and config.loss.pt_weight == pt_weight
  config.grad_norm_metrics = True
  trainer = step.Trainer(config)
  gen, disc = trainer.generator, trainer.discriminator
  init_key, train_key = jax.random.split(jax.random.key(3))
  state = trainer.create_state(init_key)
  g0, d0 = to_numpy(state.g.params), to_numpy(state.d.params)
  g_stats0, d_stats0 = to_numpy(state.g.batch_stats), to_numpy(state.d.batch_stats)
  x_real = jnp.asarray(real_batch())

  new_state, metrics = jax.jit(trainer.train_step)(state, x_real, train_key)

  # --- Independent computation. ---
  z = step_z(train_key, 0)
  x_fake, g_vars = gen.apply({'params': g0, 'batch_stats': g_stats0}, z, train=True,
                             mutable=['batch_stats'])
  x_fake = jax.lax.stop_gradient(x_fake)  # G's output is a constant for D's update.

  def d_apply(d_params, stats, x):
    (rec, code), new_vars = disc.apply({'params': d_params, 'batch_stats': stats}, x,
                                       train=True, mutable=['batch_stats'])
    return rec, code, new_vars['batch_stats']

  def d_loss_ref(d_params, x_fake):
    rec_real, _, stats = d_apply(d_params, d_stats0, x_real)
    rec_fake, _, stats = d_apply(d_params, stats, x_fake)
    e_real, e_fake = ref_energy(x_real, rec_real), ref_energy(x_fake, rec_fake)
    return jnp.mean(e_real + jnp.maximum(0.0, margin - e_fake)), stats

  (d_loss_value, d_stats1), d_grad = jax.jit(jax.value_and_grad(d_loss_ref, has_aux=True))(
      d0, x_fake)
  d1 = jax.tree.map(lambda p, g: p - lr_d * g, d0, d_grad)  # plain SGD

  def g_loss_ref(g_params, d_params):
    x = gen.apply({'params': g_params, 'batch_stats': g_stats0}, z, train=True,
                  mutable=['batch_stats'])[0]
    rec, code, _ = d_apply(d_params, d_stats1, x)
    return jnp.mean(ref_energy(x, rec)) + pt_weight * ref_pt(code)

  g_loss_value, g_grad = jax.jit(jax.value_and_grad(g_loss_ref))(g0, d1)
  g1 = jax.tree.map(lambda p, g: p - lr_g * g, g0, g_grad)

  # --- The step did exactly this. ---
  chex.assert_trees_all_close(to_numpy(new_state.d.params), to_numpy(d1), atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(to_numpy(new_state.g.params), to_numpy(g1), atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(to_numpy(new_state.d.batch_stats), to_numpy(d_stats1),
                              atol=1e-6, rtol=1e-5)
  chex.assert_trees_all_close(to_numpy(new_state.g.batch_stats),
                              to_numpy(g_vars['batch_stats']), atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(metrics['d_loss'], d_loss_value, rtol=1e-5)
  np.testing.assert_allclose(metrics['g_loss'], g_loss_value, rtol=1e-5)
  for name, grad in (('d_grad_norm', d_grad), ('g_grad_norm', g_grad)):
    squares = sum(float(np.sum(np.square(np.asarray(g, np.float64))))
                  for g in jax.tree.leaves(grad))
    np.testing.assert_allclose(metrics[name], np.sqrt(squares), rtol=1e-5, err_msg=name)
  assert int(new_state.step) == 1

  # --- The checks above can tell the alternatives apart. ---
  def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b)))
  # (i) G's gradient under the *old* D gives a visibly different update.
  g_grad_old_d = jax.jit(jax.grad(g_loss_ref))(g0, d0)
  assert lr_g * max_diff(g_grad, g_grad_old_d) > 1e-4
  # (ii) Letting L_D's gradient flow into G (no stop-gradient on G(z)) would move G too.
  def d_loss_through_g(g_params):
    x = gen.apply({'params': g_params, 'batch_stats': g_stats0}, z, train=True,
                  mutable=['batch_stats'])[0]
    return d_loss_ref(d0, x)[0]
  leak = jax.jit(jax.grad(d_loss_through_g))(g0)
  assert lr_g * max(float(np.max(np.abs(l))) for l in jax.tree.leaves(leak)) > 1e-4
  # (iii) The pulling-away term's share of G's update (lambda_PT = 0 against 0.1; measured
  # 2.5e-3) is far above the tolerance of the G comparison (atol 1e-6 + rtol 1e-5 * |p|, at
  # most ~1e-5 for BN scales near 1): a step that dropped or mis-weighted Eq. (14) fails it.
  def g_loss_without_pt(g_params, d_params):
    x = gen.apply({'params': g_params, 'batch_stats': g_stats0}, z, train=True,
                  mutable=['batch_stats'])[0]
    rec, _, _ = d_apply(d_params, d_stats1, x)
    return jnp.mean(ref_energy(x, rec))
  g_grad_no_pt = jax.jit(jax.grad(g_loss_without_pt))(g0, d1)
  assert lr_g * max_diff(g_grad, g_grad_no_pt) > 1e-4
  # (iv) Both players moved.
  assert max_diff(new_state.d.params, d0) > 1e-4 and max_diff(new_state.g.params, g0) > 1e-4


def test_step_on_two_devices_matches_one_device():
  assert jax.device_count() >= 2, 'conftest fakes 2 CPU devices'
  config = tiny_config('ebgan_pt')
  trainer = step.Trainer(config, total_steps=10)
  init_key, train_key = jax.random.split(jax.random.key(0))
  batches = [real_batch(i) for i in range(2)]

  def run(num_devices):
    mesh = sharding.make_mesh(num_devices)
    state = jax.jit(trainer.create_state, out_shardings=sharding.replicated(mesh))(init_key)
    train_step = step.jit_train_step(trainer, mesh)
    all_metrics = []
    for b in batches:
      images = sharding.global_batch(b, mesh)
      assert len(images.sharding.device_set) == num_devices
      state, metrics = train_step(state, images, train_key)
      all_metrics.append(metrics)
    return to_numpy(state), to_numpy(all_metrics)

  state_1, metrics_1 = run(1)
  state_2, metrics_2 = run(2)
  chex.assert_tree_all_finite(state_2)
  # Adam, as in the paper's EBGANs: also checks that no parameter has a gradient that is pure
  # round-off (e.g. a bias right before BatchNorm), which Adam would blow up to +-lr.
  chex.assert_trees_all_close(state_2, state_1, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(metrics_2, metrics_1, atol=1e-5, rtol=1e-5)
  assert int(state_2.step) == 2


def test_gan_kind_runs_and_only_ebgan_reports_pt_and_margin():
  x_real = jnp.asarray(real_batch())
  keys = {}
  for variant in ('gan', 'ebgan_pt'):
    config = tiny_config(variant)
    trainer = step.Trainer(config)
    state = trainer.create_state(jax.random.key(0))
    g0, d0 = to_numpy(state.g.params), to_numpy(state.d.params)
    new_state, metrics = jax.jit(trainer.train_step)(state, x_real, jax.random.key(1))
    chex.assert_tree_all_finite((new_state, metrics))
    for name, old, new in (('G', g0, new_state.g.params), ('D', d0, new_state.d.params)):
      changed = any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old),
                                                          jax.tree.leaves(to_numpy(new))))
      assert changed, f'{variant}: {name} params did not change'
    keys[variant] = set(metrics)
  assert {'d_loss', 'g_loss', 'pt', 'margin', 'energy_real', 'energy_fake'} <= keys['ebgan_pt']
  assert {'d_loss', 'g_loss'} <= keys['gan']
  assert not {'pt', 'margin', 'energy_real', 'energy_fake'} & keys['gan']


def test_gan_d_loss_is_binary_cross_entropy():
  """GAN baseline: L_D = mean(-log s(l_real) - log(1 - s(l_fake))) with G(z) held fixed."""
  config = tiny_config('gan', optim='sgd', lr_d=0.1, lr_g=0.1)
  trainer = step.Trainer(config)
  init_key, train_key = jax.random.split(jax.random.key(5))
  state = trainer.create_state(init_key)
  x_real = jnp.asarray(real_batch(2))
  _, metrics = jax.jit(trainer.train_step)(state, x_real, train_key)
  x_fake = first_fake_batch(trainer, state, train_key)
  variables = {'params': state.d.params, 'batch_stats': state.d.batch_stats}
  logit_real = np.asarray(trainer.discriminator.apply(variables, x_real, train=True,
                                                      mutable=['batch_stats'])[0], np.float64)
  logit_fake = np.asarray(trainer.discriminator.apply(variables, x_fake, train=True,
                                                      mutable=['batch_stats'])[0], np.float64)
  sigmoid = lambda l: 1.0 / (1.0 + np.exp(-l))
  expected = np.mean(-np.log(sigmoid(logit_real)) - np.log(1.0 - sigmoid(logit_fake)))
  np.testing.assert_allclose(metrics['d_loss'], expected, rtol=1e-5)


def test_margin_metric_follows_linear_decay():
  config = tiny_config('ebgan')
  config.loss.margin_decay_steps = 4
  trainer = step.Trainer(config)
  state = trainer.create_state(jax.random.key(0))
  train_step = jax.jit(trainer.train_step)
  x_real = jnp.asarray(real_batch())
  margins = []
  for _ in range(6):
    state, metrics = train_step(state, x_real, jax.random.key(1))
    margins.append(float(metrics['margin']))
  # m(s) = 10 * max(0, 1 - s / 4) at the step's starting count s = 0..5, by hand.
  np.testing.assert_allclose(margins, [10.0, 7.5, 5.0, 2.5, 0.0, 0.0], atol=1e-6)


def test_d_passes_follow_batchnorm_and_dropout():
  """One D pass over [real; fake] only where it is the arithmetic of two separate passes."""
  assert step.Trainer(tiny_config('ebgan')).d_takes_pairs  # n_layer_d = 2: no BN in D.
  with_bn = tiny_config('ebgan')
  with_bn.model.n_layer_d = 3
  assert not step.Trainer(with_bn).d_takes_pairs
  with_dropout = tiny_config('gan')
  with_dropout.model.dropout_d = True
  assert not step.Trainer(with_dropout).d_takes_pairs
  # test_d_update_holds_g_fixed_and_g_update_uses_updated_d checks the one-pass update
  # against two separate passes.


def test_d_with_dropout_draws_each_batch_its_own_mask():
  """With dropout, real and fake get the step's 3rd and 4th split keys, as two passes.

  The check at the end shows that one key shared by both batches would be another update.
  """
  lr_d, margin = 0.1, 10.0
  config = tiny_config('ebgan', optim='sgd', lr_d=lr_d, lr_g=0.05)
  config.model.dropout_d = True
  trainer = step.Trainer(config)
  disc = trainer.discriminator
  init_key, train_key = jax.random.split(jax.random.key(7))
  state = trainer.create_state(init_key)
  assert not jax.tree.leaves(state.d.batch_stats), 'n_layer_d = 2: D has no BatchNorm'
  assert not trainer.d_takes_pairs
  d0 = to_numpy(state.d.params)
  x_real = jnp.asarray(real_batch(3))
  new_state, _ = jax.jit(trainer.train_step)(state, x_real, train_key)

  x_fake = first_fake_batch(trainer, state, train_key)
  _, _, drop_real, drop_fake, _ = jax.random.split(jax.random.fold_in(train_key, 0), 5)

  def d_loss_ref(d_params, key_real, key_fake):
    rec_real, _ = disc.apply({'params': d_params}, x_real, train=True,
                             rngs={'dropout': key_real})
    rec_fake, _ = disc.apply({'params': d_params}, x_fake, train=True,
                             rngs={'dropout': key_fake})
    e_real, e_fake = ref_energy(x_real, rec_real), ref_energy(x_fake, rec_fake)
    return jnp.mean(e_real + jnp.maximum(0.0, margin - e_fake))

  grad = jax.jit(jax.grad(d_loss_ref))(d0, drop_real, drop_fake)
  d1 = jax.tree.map(lambda p, g: p - lr_d * g, d0, grad)
  chex.assert_trees_all_close(to_numpy(new_state.d.params), to_numpy(d1), atol=1e-6, rtol=1e-5)
  # One key for both halves would be a different update.
  grad_shared = jax.jit(jax.grad(d_loss_ref))(d0, drop_real, drop_real)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(grad), jax.tree.leaves(grad_shared))) * lr_d > 1e-4


def test_optimizer_update_is_optax_update_and_needs_no_weight_copies():
  """`apply_optimizer` gives optax's update exactly; the compiled step copies no weight.

  The params pass through `p + 0 * g[0]` (every gradient g) so that XLA orders the in-place
  update after the backward pass; without it XLA:CPU copied every weight read by the
  backward pass (6 matrices of this model) before overwriting it.
  """
  config = tiny_config('ebgan_pt')
  config.model.size_g = config.model.size_d = 48
  config.grad_norm_metrics = True  # The squares check below needs the norms computed.
  trainer = step.Trainer(config)
  state = trainer.create_state(jax.random.key(0))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) + 0.001 * p, state.d.params)
  params, opt_state = step.apply_optimizer(trainer.d_tx, state.d, grads)
  updates, expected_opt_state = trainer.d_tx.update(grads, state.d.opt_state, state.d.params)
  expected = jax.tree.map(lambda p, u: p + u, state.d.params, updates)
  chex.assert_trees_all_equal(params, expected)
  chex.assert_trees_all_equal(opt_state, expected_opt_state)

  mesh = sharding.make_mesh(1)
  jax.config.update('jax_disable_most_optimizations', False)  # Copy removal is an optimization.
  try:
    state = jax.jit(trainer.create_state, out_shardings=sharding.replicated(mesh))(
        jax.random.key(0))
    hlo = step.jit_train_step(trainer, mesh).lower(
        state, jnp.zeros((BATCH, 32, 32, 1)), jax.random.key(1)).compile().as_text()
  finally:
    jax.config.update('jax_disable_most_optimizations', True)
  weight_shapes = {'f32[%d,%d]' % tuple(p.shape) for p in jax.tree.leaves(
      (state.g.params, state.d.params)) if p.ndim == 2}
  copies = [line for line in hlo.splitlines() if ' copy(' in line
            and any(line.split('=')[1].strip().startswith(s) for s in weight_shapes)]
  assert not copies, 'weights copied before their update:\n' + '\n'.join(copies)
  # Nor are the squared gradients written out (step.global_norm keeps them fused).
  squares = [line for line in hlo.splitlines() if ' = ' in line
             and any(line.split(' = ')[1].startswith(s) for s in weight_shapes)
             and re.search(r'op_name="[^"]*/(square|integer_pow|mul)"', line)
             and re.search(r' fusion\(%dot(\.\d+)?\)', line)]
  assert not squares, 'squared gradients materialised:\n' + '\n'.join(squares)


def test_grad_norm_metrics_are_off_by_default():
  trainer = step.Trainer(tiny_config('ebgan_pt'))
  state = trainer.create_state(jax.random.key(0))
  _, metrics = jax.eval_shape(trainer.train_step, state, jnp.zeros((BATCH, 32, 32, 1)),
                              jax.random.key(1))
  assert {'d_loss', 'g_loss', 'energy_real', 'energy_fake', 'pt', 'margin'} == set(metrics)


def test_global_norm_is_the_root_of_the_sum_of_squares():
  tree = {'a': jnp.array([[3.0, -4.0]]), 'b': (jnp.array([-12.0]), jnp.zeros((2, 2)))}
  np.testing.assert_allclose(step.global_norm(tree), 13.0, rtol=1e-7)  # sqrt(9+16+144)


def _dot_precisions(lowered) -> list[str]:
  """The `precision = [...]` attribute of every dot_general in a lowered step's StableHLO."""
  lines = [l for l in lowered.as_text().splitlines() if 'stablehlo.dot_general' in l]
  assert lines, 'the step has no matmuls'
  return [l.split('precision = [', 1)[1].split(']', 1)[0] if 'precision = [' in l else ''
          for l in lines]


# JAX's names: 'tensorfloat32' is Precision.HIGH, 'bfloat16' is DEFAULT; with no setting (our
# 'default') the dots are lowered with DEFAULT too, so those two give the same program.
@pytest.mark.parametrize('value,expected', [('default', {'DEFAULT, DEFAULT'}),
                                            ('float32', {'HIGHEST, HIGHEST'}),
                                            ('highest', {'HIGHEST, HIGHEST'}),
                                            ('tensorfloat32', {'HIGH, HIGH'}),
                                            ('bfloat16', {'DEFAULT, DEFAULT'})])
def test_matmul_precision_reaches_every_dot_of_the_step(value, expected):
  config = tiny_config()
  config.matmul_precision = value
  trainer = step.Trainer(config)
  mesh = sharding.make_mesh(1)
  key = jax.random.key(0)
  state = jax.eval_shape(trainer.create_state, key)
  images = jax.ShapeDtypeStruct((BATCH, 32, 32, 1), jnp.float32)
  lowered = step.jit_train_step(trainer, mesh).lower(state, images, key)
  assert set(_dot_precisions(lowered)) == expected
  # The setting is scoped to the step's trace: nothing global is left behind.
  assert jax.config.jax_default_matmul_precision is None


def test_unknown_matmul_precision_is_refused_with_the_allowed_values():
  config = tiny_config()
  config.matmul_precision = 'fp8'
  with pytest.raises(ValueError, match="'fp8'.*tensorfloat32"):
    step.Trainer(config)
