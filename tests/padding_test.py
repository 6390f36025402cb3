"""Padded populations: each member, zero-padded to its bucket's widths, is its own run.

A padded member must equal its unpadded run up to float reassociation (ebgan_jax/padding.py
argues why): the references are the single runs, each compiled at its own widths with its
own optimizer, as `ebgan_jax.train` runs them.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import mnist_grid
from ebgan_jax import padding, population, sharding, step
from ebgan_jax.models import mlp
from tests import single_runs as single_runs_lib

STEPS = 4


def _config(seed, size_g, size_d, *, kind='ebgan', dropout=False, optim_d='adam',
            optim_g='adam', lr=1e-3, margin=10.0, pt_weight=0.0):
  config = mnist_grid.get_config('smoke')
  config.seed = seed
  config.model.n_layer_g = config.model.n_layer_d = 3  # BatchNorm in G and in D's encoder.
  config.model.size_g, config.model.size_d, config.model.dropout_d = size_g, size_d, dropout
  config.loss.kind, config.loss.margin, config.loss.pt_weight = kind, margin, pt_weight
  config.optim.optim_d, config.optim.optim_g = optim_d, optim_g
  config.optim.lr_d = config.optim.lr_g = lr
  return config


# EBGAN members under Adam: other widths, dropout or not, their own lr, margin and lambda_PT.
# Members 0 and 2 are padded in G and D, 2 with dropout in its padded layers, 0 without
# dropout in a program that has it.
EBGAN = [_config(0, 16, 8, lr=1e-3, margin=10.0, pt_weight=0.0),
         _config(1, 32, 16, dropout=True, lr=3e-4, margin=4.0, pt_weight=0.1),
         _config(2, 16, 8, dropout=True, lr=2e-3, margin=2.0, pt_weight=0.1)]
# GAN members mixing Adam and SGD in each player (Table 1's optimD x optimG), widths, dropout.
GAN = [_config(0, 16, 8, kind='gan', optim_d='sgd', optim_g='sgd', lr=0.05),
       _config(1, 32, 16, kind='gan', dropout=True, optim_d='adam', optim_g='sgd', lr=0.01),
       _config(2, 32, 8, kind='gan', dropout=True, optim_d='sgd', optim_g='adam', lr=0.01)]


@pytest.fixture(scope='module', params=[('ebgan', 'unroll'), ('gan', 'vmap')],
                ids=['ebgan-adam-unroll', 'gan-mixed-vmap'])
def padded_case(request, fast_compiles_module):
  """A padded population of EBGAN or GAN, trained STEPS steps, and each member's single run."""
  kind, strategy = request.param
  configs = EBGAN if kind == 'ebgan' else GAN
  mesh = sharding.make_mesh()
  batches = single_runs_lib.random_batches(configs[0], STEPS)
  pop = population.create_population(configs, STEPS, mesh, strategy=strategy, padded=True)
  initial = [population.member_state(pop, i) for i in range(len(configs))]
  initial = jax.device_get(initial)
  padded_initial = jax.device_get(pop.state)
  history = []
  for images in batches:
    pop.state, metrics = pop.train_step(pop.state, sharding.global_batch(images, mesh))
    history.append(jax.device_get(metrics))
  singles = [single_runs_lib.single_run(c, batches, mesh) for c in configs]
  return dict(kind=kind, configs=configs, pop=pop, initial=initial, history=history,
              padded_initial=padded_initial, singles=singles)


def test_the_program_is_the_widest_member_with_each_players_optimizers(padded_case):
  program = padding.program_config(padded_case['configs'])
  assert (program.model.size_g, program.model.size_d, program.model.dropout_d) == (32, 16, True)
  want = ('adam', 'adam') if padded_case['kind'] == 'ebgan' else ('adam_or_sgd',) * 2
  assert (program.optim.optim_d, program.optim.optim_g) == want


def test_members_start_as_their_single_runs_with_zero_padding(padded_case):
  for i, (initial, _, _) in enumerate(padded_case['singles']):
    member = padded_case['initial'][i]
    # The same keys and shapes: the same draws (jit of one member's init, like the run's).
    chex.assert_trees_all_close(member.g.params, initial.g.params, rtol=0, atol=0)
    chex.assert_trees_all_close(member.d.params, initial.d.params, rtol=0, atol=0)
  # Everything outside a member's own corner is zero (params and BN statistics).
  padded = padded_case['padded_initial']
  for i, member in enumerate(padded_case['initial']):
    for full, own in zip(jax.tree.leaves((padded.g, padded.d)),
                         jax.tree.leaves((member.g, member.d))):
      full = np.array(full[i])
      full[tuple(slice(0, s) for s in np.shape(own))] = 0
      assert not np.any(full)


def test_padded_members_equal_their_single_runs_in_params_and_losses(padded_case,
                                                                     assert_updates_close):
  configs, pop, history = padded_case['configs'], padded_case['pop'], padded_case['history']
  for i, (initial, alone, alone_history) in enumerate(padded_case['singles']):
    member = jax.device_get(population.member_state(pop, i))
    assert int(member.step) == STEPS
    for player in ('g', 'd'):
      got, want = getattr(member, player), getattr(alone, player)
      assert_updates_close(got.params, want.params, getattr(initial, player).params,
                           what=f'member {i} {player} params')
      # BatchNorm running statistics: per unit, the padded units' never reach the real ones.
      chex.assert_trees_all_close(got.batch_stats, want.batch_stats, rtol=1e-4, atol=1e-6)
    for s, (together, alone_metrics) in enumerate(zip(history, alone_history)):
      for key, value in alone_metrics.items():
        np.testing.assert_allclose(together[key][i], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f'member {i}, step {s}, {key} ({configs[i].optim})')


def test_padded_weights_stay_exactly_zero(padded_case):
  pop = padded_case['pop']
  state = jax.device_get(pop.state)
  for i in range(pop.size):
    own = pop.member_shapes[i]
    for full, shape in zip(jax.tree.leaves((state.g, state.d, state.g_ema)),
                           jax.tree.leaves((own.g, own.d, own.g_ema))):
      full = np.array(full[i])
      if full.ndim == 0:
        continue  # Step counts, Adam's count, injected hyper-parameters.
      full[tuple(slice(0, s) for s in shape.shape)] = 0
      assert not np.any(full), f'member {i}: a padded entry moved'


# -- the pieces ----------------------------------------------------------------------------------
@pytest.mark.parametrize('adam', [1.0, 0.0])
def test_adam_or_sgd_is_optax_adam_or_optax_sgd(adam):
  # Against optax's own transforms with injected (float32) hyper-parameters, as
  # step.make_optimizer builds 'adam' and 'sgd' for the single runs.
  params = {'w': jnp.array([[0.3, -1.2], [2.0, 0.01]]), 'b': jnp.array([0.5, -0.5])}
  want_tx = (optax.inject_hyperparams(optax.adam)(learning_rate=0.01, b1=0.5, b2=0.999)
             if adam else optax.inject_hyperparams(optax.sgd)(learning_rate=0.01))
  got_tx = optax.inject_hyperparams(step.adam_or_sgd)(learning_rate=0.01, b1=0.5, b2=0.999,
                                                      adam=adam)
  want_state, got_state = want_tx.init(params), got_tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(5):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    want, want_state = want_tx.update(grads, want_state, params)
    got, got_state = got_tx.update(grads, got_state, params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=0)
    params = optax.apply_updates(params, want)


def test_dropout_masks_of_the_real_units_do_not_depend_on_the_padding():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (6, 4, 4, 1)), jnp.float32)
  outputs = {}
  for width in (8, 24):
    d = mlp.MLPDiscriminator(n_layers=2, width=width, image_shape=(4, 4, 1), dropout=True)
    variables = d.init(jax.random.key(0), x, train=False)
    # Every hidden unit reads the same input feature, so each unit's pre-dropout activation
    # is the same: the output then shows which units the mask kept.
    kernel = jnp.zeros((16, width)).at[0, :].set(1.0)
    params = {'dense_0': {'kernel': kernel, 'bias': jnp.ones(width)},
              'logit': {'kernel': jnp.eye(width, 1), 'bias': jnp.zeros(1)}}
    del variables

    def hidden(module, params, x):
      h = module.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)},
                       capture_intermediates=True, mutable=['intermediates'])[1]
      return h['intermediates']['Dropout_0']['__call__'][0].T  # [B, width]
    outputs[width] = np.asarray(hidden(d, params, x))
  np.testing.assert_array_equal(outputs[24][:, :8], outputs[8])
  assert 0 < np.mean(outputs[8] == 0) < 1  # Some units dropped, some kept.
