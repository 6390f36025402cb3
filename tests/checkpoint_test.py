"""Tests of `ebgan_jax.checkpoint`: portable restores, mismatch vs damage, retries, SIGKILL.

Small hand-made pytrees (a dict of float and int arrays) stand in for the train state; the
training loop's own use of the checkpointer is tested in train_test.py and, across device
counts and processes, in portability_test.py.
"""

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ebgan_jax import checkpoint, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]


def make_state(scale: float = 1.0, ema: bool = False) -> dict:
  # `w` is large enough (16 KB) to be stored as a data chunk of its own, not inline.
  state = {'params': {'w': scale * jnp.arange(4096.0).reshape(64, 64), 'b': jnp.ones(4) * scale},
           'step': jnp.int32(7)}
  if ema:
    state['ema'] = {'w': jnp.zeros((64, 64))}
  return state


def on_mesh(tree, num_devices):
  return jax.device_put(tree, sharding.replicated(sharding.make_mesh(num_devices)))


def digest(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def saved(tmp_path, steps=(1, 2), num_devices=2) -> checkpoint.Checkpointer:
  ckpt = checkpoint.Checkpointer(tmp_path / 'ckpt', retry_delays=(0.0, 0.0))
  for s in steps:
    ckpt.save(s, on_mesh(make_state(float(s)), num_devices))
  return ckpt


@pytest.mark.parametrize('saved_on,restored_on', [(2, 1), (1, 2)])
def test_restores_onto_another_device_count(tmp_path, saved_on, restored_on):
  ckpt = saved(tmp_path, num_devices=saved_on)
  # A target with shardings, and an abstract one without (what `sample` builds), which is
  # replicated over all of this process's devices.
  for target, devices in ((on_mesh(make_state(0.0), restored_on), restored_on),
                          (jax.eval_shape(make_state), jax.device_count())):
    state = ckpt.restore(2, target)
    assert len(state['params']['w'].sharding.device_set) == devices
    chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(make_state(2.0)))
  ckpt.close()


def test_a_checkpoint_that_does_not_fit_names_the_leaf_and_moves_nothing(tmp_path):
  ckpt = saved(tmp_path)
  before = digest(tmp_path / 'ckpt')
  cases = {
      "['params']['w'] is shape [64, 64], float32 in the checkpoint but shape [64, 5]":
          {**make_state(), 'params': {'w': jnp.zeros((64, 5)), 'b': jnp.ones(4)}},
      "['params']['b'] is shape [4], float32 in the checkpoint but shape [4], int32":
          {**make_state(), 'params': {'w': jnp.zeros((64, 64)), 'b': jnp.ones(4, jnp.int32)}},
      "['ema']['w'] (shape [64, 64], float32) is in the current state but not in the checkpoint":
          make_state(ema=True),
      "['params']['b'] (shape [4], float32) is in the checkpoint but not in the current":
          {'params': {'w': jnp.zeros((64, 64))}, 'step': jnp.int32(0)},
  }
  for message, target in cases.items():
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
      ckpt.restore_latest(target)
    assert message in str(info.value)
    assert 'nothing was moved' in str(info.value)
  assert digest(tmp_path / 'ckpt') == before
  ckpt.close()


def _flip_middle_byte(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  files = sorted((step_dir / 'default').glob('ocdbt.process_*/d/*'))
  assert files, sorted(str(p) for p in step_dir.rglob('*'))
  return files


DAMAGE = {
    'truncated': lambda d: [f.write_bytes(f.read_bytes()[:20]) for f in _data_files(d)],
    'missing': lambda d: [f.unlink() for f in _data_files(d)],
    'garbled data': lambda d: _flip_middle_byte(max(_data_files(d), key=lambda f: f.stat().st_size)),
    'garbled metadata': lambda d: (d / '_CHECKPOINT_METADATA').write_text('{not json'),
    'garbled manifest': lambda d: (d / 'default' / 'manifest.ocdbt').write_bytes(b'\0' * 64),
}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_a_damaged_checkpoint_is_moved_aside_and_the_previous_one_restored(tmp_path, damage):
  ckpt = saved(tmp_path)
  DAMAGE[damage](tmp_path / 'ckpt' / '2')
  damaged = digest(tmp_path / 'ckpt' / '2')
  state, step = ckpt.restore_latest(on_mesh(make_state(0.0), 1))
  assert step == 1
  chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(make_state(1.0)))
  assert digest(tmp_path / 'ckpt' / 'corrupt-2') == damaged  # Kept byte for byte.
  assert ckpt.all_steps() == [1]
  ckpt.save(2, on_mesh(make_state(5.0), 1))  # The step can be saved again.
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_a_transient_error_is_retried_then_raised_and_nothing_moved(tmp_path, monkeypatch):
  ckpt = saved(tmp_path)
  before = digest(tmp_path / 'ckpt')
  real_restore = ocp.CheckpointManager.restore
  failures = {'left': 2}

  def flaky_restore(self, *args, **kwargs):
    if failures['left'] > 0:
      failures['left'] -= 1
      raise ValueError('UNAVAILABLE: the bucket did not answer (simulated)')
    return real_restore(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', flaky_restore)
  _, step = ckpt.restore_latest(make_state(0.0))  # Two failures, then the third try works.
  assert step == 2 and failures['left'] == 0

  failures['left'] = 100  # Storage down for good: raised as it is, after 3 attempts.
  with pytest.raises(ValueError, match='UNAVAILABLE'):
    ckpt.restore_latest(make_state(0.0))
  assert failures['left'] == 97
  assert digest(tmp_path / 'ckpt') == before
  ckpt.close()


def test_a_transient_error_reading_the_metadata_is_retried_too(tmp_path, monkeypatch):
  # The step's metadata (this module's record of its leaves) is read before orbax restores:
  # a storage hiccup there is no more damage than one in the arrays.
  ckpt = saved(tmp_path)
  before = digest(tmp_path / 'ckpt')
  real_read = type(ckpt.directory).read_text
  failures = {'left': 2}

  def flaky_read(self, *args, **kwargs):
    if self.name == checkpoint.CHECKPOINT_METADATA_FILE and failures['left'] > 0:
      failures['left'] -= 1
      raise OSError('503 Service Unavailable (simulated)')
    return real_read(self, *args, **kwargs)

  monkeypatch.setattr(type(ckpt.directory), 'read_text', flaky_read)
  _, step = ckpt.restore_latest(make_state(0.0))
  assert step == 2 and failures['left'] == 0
  failures['left'] = 100
  with pytest.raises(OSError, match='503'):
    ckpt.restore_latest(make_state(0.0))
  assert failures['left'] == 97  # 3 attempts, then raised; nothing moved aside.
  assert digest(tmp_path / 'ckpt') == before
  ckpt.close()


def test_an_out_of_memory_is_raised_not_taken_for_damage(tmp_path, monkeypatch):
  ckpt = saved(tmp_path)
  before = digest(tmp_path / 'ckpt')

  def oom(self, *args, **kwargs):
    raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory allocating 1.2GiB (simulated)')

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', oom)
  with pytest.raises(RuntimeError, match='RESOURCE_EXHAUSTED'):
    ckpt.restore_latest(make_state(0.0))
  assert digest(tmp_path / 'ckpt') == before
  ckpt.close()


def test_checksum_changes_with_any_bit_and_not_with_the_device_count():
  x = jnp.arange(1000, dtype=jnp.float32) / 7.0
  base = checkpoint.fingerprint({'x': x})["['x']"][2]
  assert checkpoint.fingerprint({'x': on_mesh(x, 2)})["['x']"][2] == base
  bits = np.asarray(jax.lax.bitcast_convert_type(x, jnp.uint32))
  for index, bit in ((0, 0), (999, 31), (500, 16)):
    flipped = bits.copy()
    flipped[index] ^= np.uint32(1 << bit)
    other = jax.lax.bitcast_convert_type(jnp.asarray(flipped), jnp.float32)
    assert checkpoint.fingerprint({'x': other})["['x']"][2] != base
  # By hand: bits [1, 2] (no high bits) -> 1 * 1 + 2 * 3 = 7.
  ints = jnp.array([1, 2], jnp.int32)
  assert checkpoint.fingerprint({'i': ints})["['i']"] == [[2], 'int32', 7]


def test_a_checkpoint_without_a_record_restores_and_a_misfit_is_still_named(tmp_path):
  """Checkpoints written before the record existed: plain orbax saves."""
  manager = ocp.CheckpointManager(tmp_path / 'ckpt')
  manager.save(3, args=ocp.args.StandardSave(make_state(3.0)))
  manager.wait_until_finished()
  manager.close()
  ckpt = checkpoint.Checkpointer(tmp_path / 'ckpt', retry_delays=())
  state, step = ckpt.restore_latest(make_state(0.0))
  assert step == 3
  chex.assert_trees_all_equal(jax.device_get(state), jax.device_get(make_state(3.0)))
  with pytest.raises(checkpoint.CheckpointMismatchError, match='nothing was moved'):
    ckpt.restore_latest({**make_state(), 'params': {'w': jnp.zeros((64, 5)),
                                                    'b': jnp.ones(4)}})
  assert ckpt.all_steps() == [3]
  ckpt.close()


_SAVE_BIG = '''
import sys
import jax, jax.numpy as jnp
from ebgan_jax import checkpoint
ckpt = checkpoint.Checkpointer(sys.argv[1])
ckpt.save(1, {'w': jnp.ones((4,)), 'big': jnp.zeros((8,))})
print('saved 1', flush=True)
big = jax.random.normal(jax.random.key(0), (48_000_000,))  # 192 MB that zstd cannot shrink.
ckpt.save(2, {'w': jnp.full((4,), 2.0), 'big': big[:8]} | {'pad': big})
print('saved 2', flush=True)
'''


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint_the_newest(tmp_path):
  directory = tmp_path / 'ckpt'
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'XLA_FLAGS': '', 'TF_CPP_MIN_LOG_LEVEL': '2'}
  proc = subprocess.Popen([sys.executable, '-c', _SAVE_BIG, str(directory)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 120
    while not any('tmp' in p.name for p in directory.glob('2*')):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() < deadline, 'the second save never started'
      time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)  # In the middle of writing step 2.
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  assert 'saved 2' not in proc.stdout.read()
  ckpt = checkpoint.Checkpointer(directory)
  assert ckpt.all_steps() == [1]
  state, step = ckpt.restore_latest({'w': jnp.zeros(4), 'big': jnp.ones(8)})
  assert step == 1
  chex.assert_trees_all_equal(jax.device_get(state['w']), np.ones(4, np.float32))
  ckpt.save(2, {'w': jnp.full((4,), 2.0), 'big': jnp.zeros(8)})  # Resuming saves step 2 anew.
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()
  assert not any(p.name.startswith('corrupt') for p in directory.iterdir())


def test_keep_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match='keep_checkpoints=0'):
    checkpoint.Checkpointer(tmp_path / 'c', keep=0)


def test_the_record_lists_every_leaf(tmp_path):
  ckpt = saved(tmp_path, steps=(1,))
  meta = json.loads((tmp_path / 'ckpt' / '1' / '_CHECKPOINT_METADATA').read_text())
  leaves = meta['custom_metadata'][checkpoint.METADATA_KEY]['leaves']
  assert sorted(leaves) == ["['params']['b']", "['params']['w']", "['step']"]
  assert leaves["['params']['w']"][:2] == [[64, 64], 'float32']
  ckpt.close()
