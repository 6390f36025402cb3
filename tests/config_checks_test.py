"""`config_checks.validate`: each bad field is named with its value and what is allowed."""

import importlib

import ml_collections
import pytest

from configs import mnist_fc, mnist_grid, mnist_ssl
from ebgan_jax import config_checks, data, train
from ebgan_jax.data import tfds_pipeline

DATASETS = data.known_datasets()


def problems(config, **kwargs) -> str:
  with pytest.raises(config_checks.ConfigError) as info:
    config_checks.validate(config, known_datasets=DATASETS, **kwargs)
  return str(info.value)


@pytest.mark.parametrize('module, variants', [
    ('mnist_fc', None), ('mnist_grid', None), ('celeba', None), ('lsun_bedroom', None),
    ('imagenet128', None), ('imagenet256', None), ('mnist_ssl', ('ladder', 'ebgan_ln'))])
def test_every_shipped_config_is_valid_for_its_own_driver(module, variants):
  mod = importlib.import_module(f'configs.{module}')
  for variant in variants or mod.VARIANTS:
    config = mod.get_config(variant)
    driver = {'mnist_ssl': 'semi_supervised', 'mnist_grid': 'grid'}.get(module, 'main')
    config_checks.validate(config, driver=driver, device_count=2, known_datasets=DATASETS)


def test_a_zero_batch_a_negative_margin_and_friends_are_all_named():
  config = mnist_fc.get_config('ebgan_pt')
  config.batch_size = 0
  config.loss.margin = -5.0
  config.optim.lr_d = 0.0
  config.optim.b1 = 1.0
  config.ema_decay = 1.0
  config.steps_per_call = 0
  config.log_every_steps = 0
  config.image_size = 64
  config.dataset = 'mnistt'
  message = problems(config)
  for expected in ('config.batch_size = 0: must be a positive multiple of 1',
                   'config.loss.margin = -5.0: must be a number >= 0',
                   'config.optim.lr_d = 0.0: must be a number > 0',
                   'config.optim.b1 = 1.0: must be a number >= 0 and < 1',
                   'config.ema_decay = 1.0: must be a number >= 0 and < 1',
                   'config.steps_per_call = 0: must be an integer >= 1',
                   'config.log_every_steps = 0: must be an integer >= 1',
                   "config.image_size = 64: the 'mlp' models are built for image_size in "
                   '[28, 32]',
                   "config.dataset = 'mnistt': unknown dataset"):
    assert expected in message, message
  assert message.count('\n  config.') == 9  # Nothing else was flagged.


def test_the_global_batch_must_split_over_processes_and_devices():
  config = mnist_fc.get_config('ebgan_pt')
  config.batch_size = 6
  config_checks.validate(config, process_count=2, device_count=2)  # 2 x 1 local device
  config_checks.validate(config, process_count=1, device_count=2)
  message = problems(config, process_count=2, device_count=4)
  assert 'config.batch_size = 6: must be a positive multiple of 4' in message
  assert '2 process(es) x 2 local device(s)' in message


def test_types_and_choices_are_checked():
  fields = mnist_fc.get_config('gan').to_dict()  # A ConfigDict would refuse the new types.
  fields['optim']['optim_d'] = 'adamw'
  fields['model']['dropout_d'] = 'yes'
  fields['total_steps'] = 2.5
  fields['loss']['kind'] = 'wgan'
  message = problems(ml_collections.ConfigDict(fields))
  assert "config.optim.optim_d = 'adamw': must be one of ['adam', 'sgd']" in message
  assert "config.model.dropout_d = 'yes': must be true or false" in message
  assert 'config.total_steps = 2.5: must be an integer >= 0' in message
  assert "config.loss.kind = 'wgan': must be one of ['ebgan', 'gan']" in message


def test_a_config_of_another_driver_is_refused_naming_its_command():
  message = problems(mnist_ssl.get_config('ebgan_ln'), driver='main')
  assert 'trained by `python -m experiments.semi_supervised`' in message
  message = problems(mnist_fc.get_config('ebgan'), driver='semi_supervised')
  assert 'trained by `python -m ebgan_jax.main`' in message
  message = problems(mnist_fc.get_config('ebgan'), driver='grid')
  assert 'no `grid` block' in message


def test_training_refuses_a_bad_config_before_touching_the_workdir(tmp_path):
  config = mnist_fc.get_config('ebgan_pt')
  config.batch_size = 0
  with pytest.raises(config_checks.ConfigError, match='config.batch_size = 0'):
    train.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_a_missing_imagenet_download_says_where_to_put_it(tmp_path):
  config = mnist_grid.get_config('ebgan')
  config.dataset, config.data_dir, config.tfds_data_dir = 'imagenet2012', '', str(tmp_path)
  with pytest.raises(FileNotFoundError) as info:
    tfds_pipeline.get_builder(config)
  message = str(info.value)
  assert 'ILSVRC2012_img_train.tar' in message
  assert str(tmp_path / 'downloads' / 'manual') in message
  assert '--config.tfds_data_dir' in message
