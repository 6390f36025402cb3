"""Buckets of padded populations, their padding waste, and the grid's slices."""

import collections

import jax
import jax.numpy as jnp
import pytest

from configs import mnist_grid
from ebgan_jax import models
from ebgan_jax.grid import buckets, runs


def _arch(p):
  return (p.model.n_layer_g, p.model.n_layer_d, p.model.size_g, p.model.size_d,
          p.model.dropout_d)


# -- member costs --------------------------------------------------------------------------------
@pytest.mark.parametrize('kind,n_layer_g,n_layer_d,size_g,size_d', [
    ('ebgan', 2, 2, 400, 128), ('ebgan', 5, 4, 24, 40), ('gan', 3, 5, 32, 16)])
def test_weight_counts_are_the_models_parameters(kind, n_layer_g, n_layer_d, size_g, size_d):
  config = mnist_grid.get_config('ebgan')
  m = config.model
  m.n_layer_g, m.n_layer_d, m.size_g, m.size_d = n_layer_g, n_layer_d, size_g, size_d
  config.loss.kind = kind
  z, x = jnp.zeros((2, m.latent_dim)), jnp.zeros((2, 32, 32, 1))
  count = lambda module, inputs: sum(
      leaf.size for leaf in jax.tree.leaves(jax.eval_shape(
          lambda: module.init(jax.random.key(0), inputs, train=False))['params']))
  assert buckets.weights(config) == (count(models.get_generator(config), z),
                                     count(models.get_discriminator(config), x))


def test_member_cost_and_waste_by_hand():
  small, large = (mnist_grid.get_config('ebgan') for _ in range(2))
  small.model.n_layer_g = small.model.n_layer_d = large.model.n_layer_g = 2
  large.model.n_layer_d = 2
  small.model.size_g, small.model.size_d = 400, 128
  large.model.size_g, large.model.size_d = 800, 256
  # By hand: G = 100*400 + 400*1024 + 1024 (output bias) + 2*400 (BN) = 451,424;
  # D = 1024*128 + 128 + 128*1024 + 1024 = 263,296. FLOPs 2 * 64 * (3 G + 8 D); Adam 43 B.
  assert buckets.member_cost(small) == (2 * 64 * (3 * 451_424 + 8 * 263_296),
                                        43 * (451_424 + 263_296))
  # Padded to (800, 256): G = 80,000 + 819,200 + 1,024 + 1,600 = 901,824;
  # D = 262,144 + 256 + 262,144 + 1,024 = 525,568.
  assert buckets.member_cost(small, large)[1] == 43 * (901_824 + 525_568)
  for c in (small, large):
    c.grid.bucketing = 'on'
    c.grid.bucket_size_g, c.grid.bucket_size_d = (800,), (256,)
  waste = buckets.padding_waste([small, large], max_size=16)
  assert (waste['programs'], waste['populations']) == (1, 1)
  assert waste['byte_waste'] == pytest.approx(
      2 * (901_824 + 525_568) / (451_424 + 263_296 + 901_824 + 525_568))
  sgd = mnist_grid.get_config('gan')
  sgd.optim.optim_d = sgd.optim.optim_g = 'sgd'
  mixed = mnist_grid.get_config('gan')
  mixed.optim.optim_d, mixed.optim.optim_g = 'sgd', 'adam_or_sgd'
  g, d = buckets.weights(sgd)
  assert buckets.member_cost(sgd)[1] == 27 * (g + d)  # SGD: no moments to read and write.
  assert buckets.member_cost(sgd, mixed)[1] == 43 * g + 27 * d  # In a program mixing both.


# -- buckets -------------------------------------------------------------------------------------
def _bucketed(variant):
  config = mnist_grid.get_config(variant)
  config.grid.bucketing = 'on'
  return config, mnist_grid.sweep(config)


def test_ebgan_buckets_one_program_per_depth_and_sizeg_bucket():
  config, points = _bucketed('ebgan')
  assert (config.grid.bucket_size_g, config.grid.bucket_size_d) == ((1600, 3200), (1024,))
  groups = buckets.group_points(points, config.grid.max_population, bucketed=True)
  assert sorted(i for g in groups for i in g) == list(range(512))  # Every run once.
  programs = buckets.bucket_programs(points, groups)
  # 16 depths x 2 sizeG buckets; the 24 runs of a depth's {400, 800, 1600} bucket train as
  # two populations of 12, its 8 runs with sizeG 3200 as one.
  assert len(groups) == 48 and sorted(map(len, groups)) == [8] * 16 + [12] * 32
  assert len({p.to_json() for p in programs}) == 32
  for group, program in zip(groups, programs):
    members = [points[i] for i in group]
    assert len({(p.model.n_layer_g, p.model.n_layer_d) for p in members}) == 1
    want_g = 1600 if max(p.model.size_g for p in members) <= 1600 else 3200
    assert (program.model.size_g, program.model.size_d, program.model.dropout_d) == (
        want_g, 1024, True)
    assert (program.model.n_layer_g, program.model.n_layer_d) == (
        members[0].model.n_layer_g, members[0].model.n_layer_d)
  waste = buckets.padding_waste(points)
  assert (waste['programs'], waste['populations']) == (32, 48)
  assert 1 < waste['byte_waste'] < 2


def test_a_bucket_splits_into_equal_populations_and_bucketing_off_is_unchanged():
  config = mnist_grid.get_config('margin_sweep')
  config.grid.bucketing = 'on'
  points = []
  for seed in range(25):  # One architecture, 25 seeds: one bucket.
    points.append(config.copy_and_resolve_references())
    points[-1].seed = seed
  assert sorted(map(len, buckets.group_points(points, 16, bucketed=True))) == [12, 13]
  # Off: the groups of equal parameter shapes, cut at 16 as before.
  assert [len(g) for g in buckets.group_points(points, 16, bucketed=False)] == [16, 9]


def test_bucketing_auto_is_off_on_cpu_and_unknown_values_are_refused():
  config = mnist_grid.get_config('ebgan')
  assert config.grid.bucketing == 'auto' and jax.default_backend() == 'cpu'
  assert not buckets.bucketing_on(config)
  config.grid.bucketing = 'yes'
  with pytest.raises(ValueError, match="'auto', 'on', 'off'"):
    buckets.bucketing_on(config)


# -- slices --------------------------------------------------------------------------------------
def test_gan_slice_is_each_architecture_once_balanced_over_the_settings():
  full = {runs.run_id(p): p for p in mnist_grid.sweep(mnist_grid.get_config('gan'))}
  points = mnist_grid.sweep(mnist_grid.get_config('gan_slice'))
  assert len(points) == 512 and len({_arch(p) for p in points}) == 512
  # The same points as the full grid's (run ids and seeds): a later full grid reuses them.
  for p in points:
    assert full[runs.run_id(p)].seed == p.seed
  counts = collections.Counter((p.optim.optim_d, p.optim.optim_g, p.optim.lr_d) for p in points)
  assert len(counts) == 12 and sorted(counts.values()) == [42] * 4 + [43] * 8
  # Drawn at random: the settings are not dealt in the sweep's order, and another seed draws
  # another slice.
  first = [(p.optim.optim_d, p.optim.optim_g, p.optim.lr_d) for p in points[:12]]
  assert len(set(first)) < 12
  other = mnist_grid.get_config('gan_slice')
  other.grid.sample_seed = 1
  assert ({runs.run_id(p) for p in mnist_grid.sweep(other)}
          != {runs.run_id(p) for p in points})


@pytest.mark.parametrize('variant,size', [('ebgan', 512), ('gan', 6144)])
def test_a_slice_is_a_fixed_uniform_draw_of_the_grids_points(variant, size):
  full = [runs.run_id(p) for p in mnist_grid.sweep(mnist_grid.get_config(variant))]
  small = [runs.run_id(p) for p in mnist_grid.sweep(mnist_grid.get_config(f'{variant},slice=20'))]
  large = [runs.run_id(p) for p in mnist_grid.sweep(mnist_grid.get_config(f'{variant},slice=40'))]
  assert len(set(small)) == 20 and len(set(large)) == 40
  assert set(small) <= set(large) <= set(full)  # Nested, and points of the full grid.
  where = sorted(full.index(i) for i in small)
  assert where == [full.index(i) for i in small]  # In the sweep's order.
  assert where[-1] - where[0] > size // 2  # Spread over the grid, not its first points.
  assert small == [runs.run_id(p) for p in mnist_grid.sweep(
      mnist_grid.get_config(f'{variant},slice=20'))]  # The same draw every time.
  with pytest.raises(ValueError, match='more than'):
    mnist_grid.sweep(mnist_grid.get_config(f'{variant},slice={size + 1}'))
