"""The workdir's config record: a field added to the configs later does not refuse old runs."""

import json

import pytest

from configs import mnist_fc
from ebgan_jax import workdir


def test_a_run_recorded_before_matmul_precision_existed_resumes_only_at_its_default(tmp_path):
  config = mnist_fc.get_config('ebgan')
  old = json.loads(config.to_json())
  del old['matmul_precision']  # What config.json of a run from before the field holds.
  (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(old))
  workdir.record_config(tmp_path, config, write=False)  # 'default' is what it trained with.
  config.matmul_precision = 'tensorfloat32'
  with pytest.raises(workdir.ConfigMismatchError, match="matmul_precision: 'default' -> "
                     "'tensorfloat32'"):
    workdir.record_config(tmp_path, config, write=False)
