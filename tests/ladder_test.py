"""Tests for the bottom-layer-cost Ladder Network (App. D) and configs/mnist_ssl.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_ssl
from ebgan_jax import losses
from ebgan_jax.models import ladder

# A small ladder keeps the tests fast: 7 inputs, layers of 6, 5 units, 3 classes.
SMALL_WIDTHS = (6, 5, 3)
BN_EPS = 1e-5  # Torch's (and mlp.batch_norm's) epsilon.


pytestmark = pytest.mark.usefixtures('fast_compiles_module')


def _init(module, x):
  return jax.jit(lambda: module.init({'params': jax.random.key(0), 'noise': jax.random.key(1)},
                                     x, train=True))()


@pytest.fixture(scope='module')
def small_variables():
  """Variables of LadderNetwork(SMALL_WIDTHS) on 7 inputs; independent of noise_std and B."""
  return _init(ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7), jnp.zeros((8, 7)))


def _train(module, variables, x, seed=0):
  """Training-mode forward pass: (outputs, updated batch_stats)."""
  return jax.jit(lambda v, key: module.apply(v, x, train=True, rngs={'noise': key},
                                             mutable=['batch_stats']))(
                                                 variables, jax.random.key(seed))


def _eval(module, variables, x):
  """Evaluation-mode forward pass, without a 'noise' rng."""
  return jax.jit(lambda v: module.apply(v, x, train=False))(variables)


def _set_combinator(params, layer, **values):
  """Copy of `params` with combinator_{layer}'s a_i set to values['a_i'] (others unchanged)."""
  params = jax.tree.map(lambda a: a, params)  # shallow copy of the nested dicts
  comb = dict(params['params'][f'combinator_{layer}'])
  for name, value in values.items():
    comb[name] = jnp.broadcast_to(jnp.asarray(value, jnp.float32), comb[name].shape)
  params['params'] = dict(params['params'], **{f'combinator_{layer}': comb})
  return params


def _identity_bottom_combinator(variables):
  """g(z~, u) = z~ at layer 0: a10 = 1 and every other a_i = 0 give mu = 0, v = 1."""
  zeros = {f'a{i}': 0.0 for i in range(1, 10)}
  return _set_combinator(variables, 0, **zeros, a10=1.0)


def test_mnist_ladder_output_shapes():
  model = ladder.LadderNetwork()  # App. D: 784-1000-500-250-250-250-10
  x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1))
  out, variables = jax.jit(lambda: model.init_with_output(
      {'params': jax.random.key(0), 'noise': jax.random.key(1)}, x, train=True))()
  chex.assert_shape(out['logits_clean'], (4, 10))
  chex.assert_shape(out['logits_corrupted'], (4, 10))
  chex.assert_shape(out['x_rec'], (4, 28, 28, 1))
  chex.assert_tree_all_finite(out)
  kernels = {name: p['kernel'].shape for name, p in variables['params'].items() if 'kernel' in p}
  assert kernels == {
      'enc_dense_1': (784, 1000), 'enc_dense_2': (1000, 500), 'enc_dense_3': (500, 250),
      'enc_dense_4': (250, 250), 'enc_dense_5': (250, 250), 'enc_dense_6': (250, 10),
      'dec_dense_5': (10, 250), 'dec_dense_4': (250, 250), 'dec_dense_3': (250, 250),
      'dec_dense_2': (250, 500), 'dec_dense_1': (500, 1000), 'dec_dense_0': (1000, 784)}


def test_encoder_batch_norm_has_bias_but_no_scale(small_variables):
  variables = small_variables
  for l in range(1, len(SMALL_WIDTHS) + 1):
    # App. D: BN "without the learned parameter gamma but merely with a bias term beta".
    assert set(variables['params'][f'enc_bn_{l}']) == {'bias'}
    assert set(variables['batch_stats'][f'enc_bn_{l}']) == {'mean', 'var'}


def test_clean_and_corrupted_paths_share_one_set_of_weights(small_variables):
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.0)
  x = jax.random.normal(jax.random.key(4), (16, 7))
  variables = small_variables
  # One kernel per encoder layer: the corrupted path creates no parameters of its own.
  enc = sorted(n for n in variables['params'] if n.startswith('enc_dense'))
  assert enc == ['enc_dense_1', 'enc_dense_2', 'enc_dense_3']
  # Without noise the corrupted path's own batch normalization equals the clean BN's.
  out, _ = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']))(variables)
  chex.assert_trees_all_close(out['logits_corrupted'], out['logits_clean'], atol=1e-4)
  # With noise they differ.
  noisy = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.3)
  out, _ = _train(noisy, variables, x)
  assert not np.allclose(out['logits_corrupted'], out['logits_clean'], atol=1e-3)


def test_eval_mode_is_clean_and_needs_no_noise_rng(small_variables):
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.3)
  x = jax.random.normal(jax.random.key(6), (8, 7))
  variables = small_variables
  out = _eval(model, variables, x)  # no 'noise' rng given
  chex.assert_trees_all_equal(out['logits_corrupted'], out['logits_clean'])


def test_clean_logits_match_a_numpy_forward_pass(small_variables):
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.3)
  x = jax.random.normal(jax.random.key(7), (10, 7))
  variables = small_variables
  params = jax.tree.map(np.asarray, variables['params'])
  # Give every beta a distinct non-zero value so that its place in the formula matters.
  for l, width in enumerate(SMALL_WIDTHS, start=1):
    params[f'enc_bn_{l}']['bias'] = np.linspace(-0.5, 0.5, width, dtype=np.float32) + 0.1 * l
  out, _ = _train(model, {'params': params, 'batch_stats': variables['batch_stats']}, x)
  # Rasmus et al., Algorithm 1 (clean path), without gamma (App. D), in numpy:
  # h(l) = relu((W h(l-1) - mean) / sqrt(var + eps) + beta), the top layer without relu.
  h = np.asarray(x, np.float64)
  for l in range(1, len(SMALL_WIDTHS) + 1):
    pre = h @ params[f'enc_dense_{l}']['kernel']
    centred = pre - pre.sum(0) / pre.shape[0]
    std = np.sqrt((centred**2).sum(0) / pre.shape[0] + BN_EPS)
    a = centred / std + params[f'enc_bn_{l}']['bias']
    h = a if l == len(SMALL_WIDTHS) else np.maximum(a, 0.0)
  chex.assert_trees_all_close(out['logits_clean'], h.astype(np.float32), atol=1e-4)


def test_running_statistics_come_from_the_clean_path_only(small_variables):
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=1.0)
  x = jax.random.normal(jax.random.key(9), (32, 7)) + 2.0
  variables = small_variables
  _, updates = _train(model, variables, x)
  # Running mean starts at 0 and moves by (1 - momentum) = 0.1 towards the clean batch mean
  # of W(1) x; noisy inputs would move it elsewhere.
  kernel = np.asarray(variables['params']['enc_dense_1']['kernel'])
  expected = 0.1 * (np.asarray(x) @ kernel).mean(0)
  chex.assert_trees_all_close(updates['batch_stats']['enc_bn_1']['mean'], expected, atol=1e-5)


def test_combinator_matches_hand_worked_numbers():
  # Two units with different parameters, two examples.
  a = {'a1': [2.0, 0.0], 'a2': [1.0, 1.0], 'a3': [0.0, 1.0], 'a4': [0.5, 1.0],
       'a5': [-1.0, 0.0], 'a6': [1.0, 0.0], 'a7': [-1.0, 1.0], 'a8': [0.0, 0.0],
       'a9': [0.25, 0.0], 'a10': [0.5, 2.0]}
  z_corrupted = jnp.array([[3.0, 1.0], [-1.0, 4.0]])
  u = jnp.array([[0.0, 1.0], [2.0, -3.0]])
  params = {'params': {k: jnp.array(v) for k, v in a.items()}}
  got = ladder.Combinator().apply(params, z_corrupted, u)

  # By hand, example 0, unit 0 (u = 0, sigmoid(0) = 1/2):
  #   mu = 2 * 1/2 + 0.5 * 0 - 1 = 0;  v = 1 * 1/2 + 0.25 * 0 + 0.5 = 1;  z^ = (3 - 0) * 1 + 0 = 3.
  # Example 0, unit 1 (u = 1): mu = 0 + 1 * 1 + 0 = 1; v = 0 + 0 + 2 = 2; z^ = (1 - 1) * 2 + 1 = 1.
  # Example 1, unit 1 (u = -3): mu = -3; v = 2; z^ = (4 + 3) * 2 - 3 = 11.
  np.testing.assert_allclose(np.asarray(got)[0], [3.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(got)[1, 1], 11.0, rtol=1e-6)

  # All entries, written as the convex-style mix z^ = v z~ + (1 - v) mu in numpy.
  p = {k: np.array(v) for k, v in a.items()}
  zc, uu = np.asarray(z_corrupted), np.asarray(u)
  sig = lambda t: 1.0 / (1.0 + np.exp(-t))
  mu = p['a1'] * sig(p['a2'] * uu + p['a3']) + p['a4'] * uu + p['a5']
  v = p['a6'] * sig(p['a7'] * uu + p['a8']) + p['a9'] * uu + p['a10']
  chex.assert_trees_all_close(got, v * zc + (1.0 - v) * mu, rtol=1e-6)


def test_combinator_initialisation_follows_rasmus():
  params = ladder.Combinator().init(jax.random.key(0), jnp.ones((2, 3)), jnp.ones((2, 3)))
  values = {k: float(v[0]) for k, v in params['params'].items()}
  assert values == {'a1': 0.0, 'a2': 1.0, 'a3': 0.0, 'a4': 0.0, 'a5': 0.0,
                    'a6': 0.0, 'a7': 1.0, 'a8': 0.0, 'a9': 0.0, 'a10': 0.0}


def test_reconstruction_is_zero_at_initialisation(small_variables):
  # v = a10 = 0 at init, so z^ = mu = a1 sigmoid(.) + a4 u + a5 = 0 and the energy is sum x^2.
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7)
  x = jnp.array([[1.0, -2.0, 0.0, 0.5, 0.5, 1.0, 3.0], [0.0] * 6 + [2.0]])
  variables = small_variables
  out, _ = _train(model, variables, x)
  chex.assert_trees_all_close(out['x_rec'], jnp.zeros_like(x))
  # 1 + 4 + 0 + 0.25 + 0.25 + 1 + 9 = 15.5 and 4.
  chex.assert_trees_all_close(losses.squared_l2_energy(x, out['x_rec']), jnp.array([15.5, 4.0]))


def test_bottom_lateral_connection_carries_the_corrupted_input(small_variables):
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.3)
  x = jax.random.uniform(jax.random.key(12), (256, 7))
  variables = _identity_bottom_combinator(small_variables)
  # Evaluation: no corruption, so g(z~(0), u) = z~(0) = x.
  out = _eval(model, variables, x)
  chex.assert_trees_all_close(out['x_rec'], x)
  # Training: z~(0) = x + N(0, 0.3^2). 1,792 draws: the sample std has a standard error of
  # 0.3 / sqrt(2 * 1792) = 0.005 and the mean one of 0.3 / sqrt(1792) = 0.007; allow 3-4 of them.
  out, _ = _train(model, variables, x)
  noise = np.asarray(out['x_rec'] - x)
  assert abs(noise.mean()) < 0.025
  assert abs(noise.std() - 0.3) < 0.02


def test_gradients_reach_encoder_and_decoder_through_the_reconstruction(small_variables):
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.3)
  x = jax.random.normal(jax.random.key(14), (8, 7))
  variables = small_variables
  # At initialisation v = mu = 0 in every combinator, so z^(l) = 0 and nothing reaches the
  # encoder. With a4 = 1 (mu = u) and a10 = 1/2 (v = 1/2), z^(l) = (z~(l) + u(l)) / 2 everywhere.
  for l in range(len(SMALL_WIDTHS) + 1):
    variables = _set_combinator(variables, l, a4=1.0, a10=0.5)

  def energy(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                         train=True, rngs={'noise': jax.random.key(15)},
                         mutable=['batch_stats'])
    return jnp.mean(losses.squared_l2_energy(x, out['x_rec']))

  grads = jax.jit(jax.grad(energy))(variables['params'])
  chex.assert_tree_all_finite(grads)
  for name in ('enc_dense_1', 'dec_dense_0', 'dec_dense_2', 'enc_bn_1'):
    assert any(np.abs(np.asarray(g)).sum() > 0 for g in jax.tree.leaves(grads[name])), name


def test_paths_run_alone_or_vmapped_over_batches_equal_the_whole_network(small_variables):
  # The training step runs the paths separately, several batches at once (semi_supervised.py).
  model = ladder.LadderNetwork(widths=SMALL_WIDTHS, input_dim=7, noise_std=0.3)
  variables = jax.tree.map(lambda a: a + 0.2, small_variables)  # non-trivial combinators
  xs = jax.random.normal(jax.random.key(16), (2, 8, 7))  # two batches of 8
  keys = jax.random.split(jax.random.key(17), 2)
  whole = [_train_with_key(model, variables, xs[i], keys[i]) for i in range(2)]

  def paths(x, key):
    encoded = model.apply(variables, x, method='corrupted_encoder', rngs={'noise': key})
    return encoded[0], model.apply(variables, *encoded[::-1], method='decoder')

  # Each batch normalized with its own statistics, its noise from its own key: the same
  # numbers as one whole-network call per batch.
  logits, x_rec = jax.jit(jax.vmap(paths))(xs, keys)
  for i in range(2):
    chex.assert_trees_all_close(logits[i], whole[i][0]['logits_corrupted'], atol=1e-6)
    chex.assert_trees_all_close(x_rec[i], whole[i][0]['x_rec'], atol=1e-6)
  assert not np.allclose(logits[0], logits[1], atol=1e-3)
  # The clean path alone updates the running statistics as the whole network does.
  _, updates = jax.jit(lambda v: model.apply(v, xs[0], train=True, method='clean_encoder',
                                             mutable=['batch_stats']))(variables)
  chex.assert_trees_all_close(updates, whole[0][1], atol=1e-6)
  with pytest.raises(ValueError, match='built for 7 inputs but got 784.*input_dim'):
    model.apply(variables, jnp.zeros((2, 28, 28, 1)), train=False)


def _train_with_key(module, variables, x, key):
  return jax.jit(lambda v: module.apply(v, x, train=True, rngs={'noise': key},
                                        mutable=['batch_stats']))(variables)


@pytest.mark.parametrize('arg', ['ladder', 'ebgan_ln', 'ladder,num_labelled=200',
                                 'ebgan_ln,num_labelled=1000', 'ladder,runlocal',
                                 'ebgan_ln,runlocal', 'control', 'control,runlocal'])
def test_mnist_ssl_configs_build(arg):
  config = mnist_ssl.get_config(arg)
  assert config.image_size == 28  # App. D: unpadded MNIST.
  assert config.batch_size == 100
  assert tuple(config.model.ladder_widths) == (1000, 500, 250, 250, 250, 10)
  assert config.model.noise_std == 0.3
  np.testing.assert_allclose(config.loss.recon_weight, 1000.0 / 784.0)
  assert config.optim.b1 == 0.5
  assert 0 < config.optim.lr_decay_start < config.total_steps
  model = ladder.from_config(config)
  assert model.widths == (1000, 500, 250, 250, 250, 10)


def test_mnist_ssl_paper_schedules():
  ladder_cfg = mnist_ssl.get_config('ladder')
  assert (ladder_cfg.total_steps, ladder_cfg.optim.lr_decay_start) == (120_000, 80_000)
  assert ladder_cfg.optim.lr_d == 0.0002
  ln = mnist_ssl.get_config('ebgan_ln')
  assert (ln.total_steps, ln.optim.lr_decay_start, ln.generator_off_step) == (
      180_000, 120_000, 60_000)
  assert (ln.optim.lr_d, ln.optim.lr_g) == (0.0005, 0.00025)
  assert mnist_ssl.get_config('ebgan_ln,runlocal').dataset == 'mnist_10k'
  # The control arm: the Ladder and its schedule at EBGAN-LN's D learning rate.
  control = mnist_ssl.get_config('control')
  assert (control.optim.lr_d, control.total_steps, control.optim.lr_decay_start,
          control.loss.kind, control.loss.hinge_weight) == (0.0005, 120_000, 80_000, 'none', 0.0)
  with pytest.raises(ValueError, match='num_labelled'):
    mnist_ssl.get_config('ladder,num_labelled=300')
