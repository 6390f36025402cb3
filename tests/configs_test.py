"""Tests of configs/: every config file x variant loads and builds; Figure 4's values; parse_arg.

Config files are discovered at collection time: a new `configs/<name>.py` is tested without
editing this file. A module's `VARIANTS` (a tuple of `get_config` argument strings) lists the
variants to build; without it, `get_config()` is called with no argument.
"""

import importlib
import pathlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import common
from ebgan_jax import semi_supervised, step

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
NOT_CONFIGS = {'__init__', 'common'}


def _config_modules() -> list[str]:
  return sorted(p.stem for p in CONFIG_DIR.glob('*.py') if p.stem not in NOT_CONFIGS)


def _cases() -> list:
  """(module name, arg) for every config file and variant; arg None = get_config()."""
  cases = []
  for name in _config_modules():
    module = importlib.import_module(f'configs.{name}')
    variants = getattr(module, 'VARIANTS', None)
    for arg in (variants if variants is not None else (None,)):
      cases.append(pytest.param(name, arg, id=f'{name}:{arg}' if arg else name))
  return cases


CASES = _cases()


def _load(name: str, arg: str | None) -> ml_collections.ConfigDict:
  module = importlib.import_module(f'configs.{name}')
  return module.get_config(arg) if arg is not None else module.get_config()


def test_discovery_finds_mnist_fc_and_its_variants():
  assert 'mnist_fc' in _config_modules()
  assert 'common' not in _config_modules()
  ids = {p.id for p in CASES}
  assert {'mnist_fc:gan', 'mnist_fc:ebgan', 'mnist_fc:ebgan_pt'} <= ids


@pytest.mark.parametrize('name,arg', CASES)
def test_config_loads_and_builds_models(name, arg):
  config = _load(name, arg)
  assert isinstance(config, ml_collections.ConfigDict)
  if config.get('experiment', 'gan') == 'semi_supervised':
    _build_semi_supervised(config)
    return
  trainer = step.Trainer(config)
  state = jax.eval_shape(trainer.create_state, jax.random.key(0))
  assert isinstance(state, step.TrainState)
  assert jax.tree_util.tree_leaves(state.g.params), 'G has no parameters'
  assert jax.tree_util.tree_leaves(state.d.params), 'D has no parameters'
  # G's images have the configured shape.
  z = jax.ShapeDtypeStruct((2, config.model.latent_dim), jnp.float32)
  images = jax.eval_shape(trainer.generate, state.g.params, state.g.batch_stats, z)
  chex.assert_shape(images, (2, config.image_size, config.image_size, config.channels))


def _build_semi_supervised(config: ml_collections.ConfigDict) -> None:
  """The Ladder (and EBGAN-LN's G) of an SSL config, through ebgan_jax.semi_supervised."""
  trainer = semi_supervised.Trainer(config)
  state = jax.eval_shape(trainer.create_state, jax.random.key(0))
  assert isinstance(state, semi_supervised.SSLState)
  assert jax.tree_util.tree_leaves(state.d.params), 'the Ladder has no parameters'
  if config.loss.kind == 'ebgan':  # EBGAN-LN: G's images are the Ladder's input size.
    z = jax.ShapeDtypeStruct((2, config.model.latent_dim), jnp.float32)
    images = jax.eval_shape(trainer.generate, state.g.params, state.g.batch_stats, z)
    chex.assert_shape(images, (2, config.image_size, config.image_size, config.channels))
  else:
    assert state.g is None
  x = jax.ShapeDtypeStruct((2, config.image_size, config.image_size, config.channels),
                           jnp.float32)
  predictions = jax.eval_shape(trainer.predict, state.d.params, state.d.batch_stats, x)
  chex.assert_shape(predictions, (2,))


def _modules_with(attribute: str) -> list[str]:
  return [n for n in _config_modules()
          if hasattr(importlib.import_module(f'configs.{n}'), attribute)]


@pytest.mark.parametrize('name', _modules_with('VARIANTS'))
def test_config_variants_are_distinct(name):
  variants = importlib.import_module(f'configs.{name}').VARIANTS
  assert variants and all(isinstance(v, str) for v in variants)
  as_json = [_load(name, v).to_json_best_effort(sort_keys=True) for v in variants]
  assert len(set(as_json)) == len(as_json), f'{name}: two variants give the same config'


# A config's `sweep` (configs/mnist_grid.py, the only one) is tested in grid_search_test.py:
# sizes, distinct points and distinct run ids of every variant.


# -- Figure 4 (App. C) -------------------------------------------------------------------------

def test_mnist_fc_gan_is_figure_4a():
  config = _load('mnist_fc', 'gan')
  m = config.model
  # App. C, figure 4(a): nLayerG=5, nLayerD=2, sizeG=1600, sizeD=1024, dropoutD=0, SGD, lr 0.01.
  assert (m.n_layer_g, m.n_layer_d, m.size_g, m.size_d, m.dropout_d) == (5, 2, 1600, 1024, False)
  assert config.loss.kind == 'gan'
  assert config.optim.optim_d == config.optim.optim_g == 'sgd'
  assert config.optim.lr_d == config.optim.lr_g == 0.01


@pytest.mark.parametrize('variant,pt_weight', [('ebgan', 0.0), ('ebgan_pt', 0.1)])
def test_mnist_fc_ebgan_is_figure_4b_and_4c(variant, pt_weight):
  config = _load('mnist_fc', variant)
  m = config.model
  # App. C, figure 4(b): nLayerG=5, nLayerD=2, sizeG=800, sizeD=1024, dropoutD=0, Adam,
  # lr 0.001, margin 10; figure 4(c): the same with lambda_PT = 0.1.
  assert (m.n_layer_g, m.n_layer_d, m.size_g, m.size_d, m.dropout_d) == (5, 2, 800, 1024, False)
  assert config.loss.kind == 'ebgan'
  assert config.optim.optim_d == config.optim.optim_g == 'adam'
  assert config.optim.lr_d == config.optim.lr_g == 0.001
  assert config.loss.margin == 10.0
  assert config.loss.margin_decay_steps == 0  # Sec. 4.1: m = 10, not tuned, constant
  assert config.loss.pt_weight == pt_weight


def test_mnist_fc_default_is_ebgan_pt_and_grid_images_are_32():
  config = _load('mnist_fc', None)
  assert config.loss.kind == 'ebgan' and config.loss.pt_weight == 0.1
  assert config.image_size == 32  # App. D, "Other details": MNIST zero-padded to 32x32


def test_mnist_fc_unknown_variant_raises():
  with pytest.raises(ValueError, match='wgan'):
    _load('mnist_fc', 'wgan')


# -- common.parse_arg --------------------------------------------------------------------------

def test_parse_arg_variant_and_key_value():
  arg = common.parse_arg('ebgan,foo=3', variant='ebgan_pt', foo=1)
  assert arg.variant == 'ebgan'
  assert arg.foo == 3 and isinstance(arg.foo, int)  # converted to the default's type


def test_parse_arg_none_and_empty_give_defaults():
  for raw in (None, ''):
    arg = common.parse_arg(raw, variant='ebgan_pt', foo=1, runlocal=False)
    assert (arg.variant, arg.foo, arg.runlocal) == ('ebgan_pt', 1, False)


def test_parse_arg_types_and_bare_boolean_flags():
  arg = common.parse_arg('runlocal, margin=40 ,pt=false', variant='a', runlocal=False,
                         margin=80.0, pt=True)
  assert arg.runlocal is True            # a bare word naming a boolean sets it
  assert arg.margin == 40.0 and isinstance(arg.margin, float)
  assert arg.pt is False
  assert arg.variant == 'a'


def test_parse_arg_rejects_unknown_key():
  with pytest.raises(ValueError, match='bar'):
    common.parse_arg('ebgan,bar=2', variant='ebgan_pt', foo=1)


def test_parse_arg_rejects_bare_word_without_string_default():
  with pytest.raises(ValueError, match='ebgan'):
    common.parse_arg('ebgan', foo=1)


def test_parse_arg_rejects_badly_typed_value():
  with pytest.raises(ValueError):
    common.parse_arg('foo=three', foo=1)
