"""Population training: each member gives the result it would give alone, under every strategy."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist_grid
from ebgan_jax import population, sharding, step
from tests import single_runs as single_runs_lib

STEPS = 4
# Among the fake energies of these runs' first steps (~1.4-1.7), so that it changes which
# samples the hinge trains on (see the control test).
MARGIN_OF_MEMBER_1 = 1.5


def _config(seed, lr, margin=10.0, pt_weight=0.0, kind='ebgan', optim='adam'):
  config = mnist_grid.get_config('smoke')
  config.seed = seed
  config.loss.kind, config.loss.margin, config.loss.pt_weight = kind, margin, pt_weight
  config.optim.optim_d = config.optim.optim_g = optim
  config.optim.lr_d = config.optim.lr_g = lr
  return config


@pytest.fixture(scope='module')
def single_runs():
  """`single_runs.single_run`, each config's run computed once for the module: every strategy's
  population is compared with the same references (they are not compiled again)."""
  runs = {}

  def run(config, batches, mesh):
    key = config.to_json(sort_keys=True)
    if key not in runs:
      runs[key] = single_runs_lib.single_run(config, batches, mesh)
    return runs[key]
  return run


def _population_run(configs, batches, mesh, corrupt=None, pop=None, strategy='vmap'):
  pop = pop or population.create_population(configs, STEPS, mesh, strategy=strategy)
  if corrupt is not None:  # Poison one member's G params with NaN.
    pop.state = pop.state.replace(g=pop.state.g.replace(params=jax.tree.map(
        lambda p: p.at[corrupt].set(jnp.nan), pop.state.g.params)))
  history = []
  for images in batches:
    pop.state, metrics = pop.train_step(pop.state, sharding.global_batch(images, mesh))
    history.append(jax.device_get(metrics))
  return pop, history


@pytest.mark.parametrize('field,other,players', [
    ('lr', dict(lr=3e-4), ('g', 'd')),
    ('margin', dict(margin=MARGIN_OF_MEMBER_1), ('d',)),
    ('pt_weight', dict(pt_weight=0.1), ('g',))])
def test_the_update_tolerance_tells_one_members_settings_from_anothers(
    field, other, players, single_runs, assert_updates_close):
  """The control of the test below: from the same initial params (seed 0), a run with another
  lr, margin or lambda_PT fails the check that a member passes against its own run alone.

  The margin must cut through the fake energies to matter: where m is above every E(G(z))
  (here ~1.4-1.7 in these steps), the hinge's gradient is -dE/dtheta whatever m is, and a
  margin of 4 trains exactly as one of 10. MARGIN_OF_MEMBER_1 lies among the energies."""
  settings = dict(lr=1e-3, margin=10.0, pt_weight=0.0)
  mine, theirs = _config(0, **settings), _config(0, **{**settings, **other})
  mesh = sharding.make_mesh()
  batches = single_runs_lib.random_batches(mine, STEPS)
  initial, alone, _ = single_runs(mine, batches, mesh)
  _, changed, _ = single_runs(theirs, batches, mesh)
  for player in players:
    with pytest.raises(AssertionError):
      assert_updates_close(getattr(changed, player).params, getattr(alone, player).params,
                           getattr(initial, player).params, what=f'{field}: {player}')


@pytest.mark.parametrize('strategy', ['vmap', 'unroll', 'map'])
def test_adam_members_follow_their_single_runs(strategy, single_runs, assert_updates_close):
  # Members differ in seed, learning rate, margin and lambda_PT (all per-member fields).
  configs = [_config(0, 1e-3, margin=10.0, pt_weight=0.0),
             _config(7, 3e-4, margin=MARGIN_OF_MEMBER_1, pt_weight=0.1)]
  mesh = sharding.make_mesh()
  batches = single_runs_lib.random_batches(configs[0], STEPS)
  pop, pop_history = _population_run(configs, batches, mesh, strategy=strategy)
  for i, config in enumerate(configs):
    initial, alone, history = single_runs(config, batches, mesh)
    member = jax.device_get(population.member_state(pop, i))
    # In parameters, to a tolerance set by the update size (conftest._assert_updates_close):
    # Adam's step moves each weight by ~lr, so a member with the other's lr, margin or
    # lambda_PT differs in most weights by a good share of the update, while round-off
    # leaves all but a few within 1e-3 of it.
    for player in ('g', 'd'):
      assert_updates_close(getattr(member, player).params, getattr(alone, player).params,
                           getattr(initial, player).params, what=f'member {i} {player}')
    chex.assert_trees_all_close(member.d.batch_stats, alone.d.batch_stats, rtol=1e-4,
                                atol=1e-6)
    for s, (alone, together) in enumerate(zip(history, pop_history)):
      for key in ('d_loss', 'g_loss', 'energy_real', 'energy_fake', 'pt'):
        # Why not exact: XLA computes the vmapped (batched) matmuls with another blocking and
        # summation order than the single ones, so the two differ by float32 round-off
        # (~1e-7 relative). Adam divides the update by sqrt(v) + eps, which for parameters whose
        # gradient is near zero turns that round-off into O(lr) differences in the update, so
        # after a few steps single parameters can differ visibly while every loss stays within
        # ~1e-5 relative (the parameters are compared above, to the update's size, and
        # tightly under SGD below, where updates are linear in the gradient).
        np.testing.assert_allclose(together[key][i], alone[key], rtol=1e-4, atol=1e-5,
                                   err_msg=f'member {i}, step {s}, {key}')


@pytest.fixture(scope='module', params=['vmap', 'unroll'])
def sgd_case(request):
  """A 2-member SGD GAN population, its initial state kept (the step donates its input)."""
  configs = [_config(0, 0.01, kind='gan', optim='sgd'), _config(3, 0.001, kind='gan',
                                                                 optim='sgd')]
  mesh = sharding.make_mesh()
  pop = population.create_population(configs, STEPS, mesh, strategy=request.param)
  initial = jax.tree.map(jnp.copy, pop.state)
  batches = single_runs_lib.random_batches(configs[0], STEPS)
  pop, history = _population_run(configs, batches, mesh, pop=pop)
  return configs, mesh, batches, pop, initial, history


def test_sgd_member_params_match_their_single_runs(sgd_case, single_runs):
  configs, mesh, batches, pop, _, pop_history = sgd_case
  for i, config in enumerate(configs):
    _, state, history = single_runs(config, batches, mesh)
    member = jax.device_get(population.member_state(pop, i))
    # SGD's update is lr * gradient: the round-off of the batched matmuls stays round-off.
    chex.assert_trees_all_close(member.g.params, state.g.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(member.d.params, state.d.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(member.d.batch_stats, state.d.batch_stats, atol=1e-5, rtol=1e-5)
    assert int(member.step) == STEPS
    for alone, together in zip(history, pop_history):
      np.testing.assert_allclose(together['d_loss'][i], alone['d_loss'], rtol=1e-5, atol=1e-6)


def test_a_nan_member_leaves_the_others_untouched(sgd_case):
  configs, mesh, batches, clean, initial, clean_history = sgd_case
  poisoned = dataclasses.replace(clean, state=jax.tree.map(jnp.copy, initial))  # Donated below.
  poisoned, poisoned_history = _population_run(configs, batches, mesh, corrupt=1, pop=poisoned)
  assert not np.isfinite(poisoned_history[-1]['g_loss'][1])
  # Member 0 is bit-for-bit what it is in the clean population: no strategy mixes members.
  chex.assert_trees_all_equal(population.member_state(poisoned, 0).g.params,
                              population.member_state(clean, 0).g.params)
  for a, b in zip(clean_history, poisoned_history):
    assert a['d_loss'][0] == b['d_loss'][0]


def test_group_configs_groups_equal_shapes_and_splits_large_groups():
  configs = [_config(s, lr) for s in range(3) for lr in (1e-3, 1e-4)]
  other = _config(0, 1e-3)
  other.model.size_d = 16  # Another shape: another population.
  groups = population.group_configs(configs + [other], max_size=4)
  assert sorted(map(len, groups)) == [1, 2, 4]
  assert [6] in groups
  with pytest.raises(ValueError, match='differ only'):
    population.create_population([configs[0], other], STEPS)


def test_member_configs_keep_their_hyperparameters(sgd_case):
  _, _, _, _, initial, _ = sgd_case
  np.testing.assert_allclose(initial.d.opt_state.hyperparams['learning_rate'], [0.01, 0.001])
  np.testing.assert_allclose(initial.g.opt_state.hyperparams['learning_rate'], [0.01, 0.001])
  np.testing.assert_allclose(initial.hparams['margin'], [10.0, 10.0])


def test_matmul_precision_reaches_the_vmapped_population_step():
  configs = [_config(0, 1e-3), _config(1, 1e-3)]
  images = jax.ShapeDtypeStruct((configs[0].batch_size, 32, 32, 1), jnp.float32)
  texts = {}
  for value in ('default', 'highest'):
    for config in configs:
      config.matmul_precision = value
    pop = population.create_population(configs, STEPS, abstract=True)
    texts[value] = pop.train_step.lower(pop.state, images).as_text()
  dots = {v: [l for l in t.splitlines() if 'stablehlo.dot_general' in l] for v, t in texts.items()}
  assert dots['highest'] and all('HIGHEST' in l for l in dots['highest'])
  assert not any('HIGHEST' in l for l in dots['default'])
  # Abstract: shapes only, no buffers (what the grid's compile threads build).
  assert all(isinstance(l, jax.ShapeDtypeStruct) for l in jax.tree.leaves(pop.state))


def test_auto_strategy_is_unroll_on_cpu_and_unknown_ones_are_refused():
  assert jax.default_backend() == 'cpu'
  assert population.resolve_strategy('auto') == 'unroll'
  assert population.resolve_strategy('vmap') == 'vmap'
  with pytest.raises(ValueError, match="'pmap'.*'unroll'"):
    population.resolve_strategy('pmap')


def test_unrolled_carry_is_one_state_per_member_and_round_trips():
  configs = [_config(s, 1e-3) for s in range(3)]
  pop = population.create_population(configs, STEPS, strategy='unroll')
  carry = pop.to_carry(pop.state)
  assert isinstance(carry, tuple) and len(carry) == 3
  # Member i's slice of the stacked state, unstacked: the leading axis is gone.
  for i, member in enumerate(carry):
    chex.assert_trees_all_equal(member, population.member_state(pop, i))
  chex.assert_trees_all_equal(pop.from_carry(carry), pop.state)
  # The members' own keys: seed 1's member initialises as seed 1's single run (to round-off:
  # the vmapped initialiser scales the normal draws in another fusion), not as seed 0's.
  init_key = jax.random.split(jax.random.key(1), 3)[0]
  alone = step.Trainer(configs[1], STEPS).create_state(init_key)
  chex.assert_trees_all_close(carry[1].g.params, alone.g.params, rtol=1e-6, atol=1e-9)
  with pytest.raises(AssertionError):
    chex.assert_trees_all_close(carry[0].g.params, alone.g.params, rtol=1e-6, atol=1e-9)
