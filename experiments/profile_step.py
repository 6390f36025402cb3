"""Where one train step's time goes: a profiler trace of the jitted step, summed per op.

  python -m experiments.profile_step --config=ebgan_pt --batch_size=64 [--steps=20]
  python -m experiments.profile_step --config=celeba:ebgan_pt --batch_size=256 --dtype=bfloat16

Runs the step of one config (synthetic batches, as experiments/benchmark.py) under
`jax.profiler`, reads the trace back with `jax.profiler.ProfileData`, and prints the busiest
ops of the device (on CPU: of XLA's worker threads) per step and their share, grouped into
matmul/convolution, reduction, elementwise, copy/transpose and other kernels. This is the
evidence behind the MFU discussion in BENCHMARKS.md; it names ops by their HLO or kernel
names, which is what the trace records.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

import jax
from absl import app, flags

from ebgan_jax import step
from experiments import benchmark  # Also defines --dtype.

FLAGS = flags.FLAGS
flags.DEFINE_string('config', 'ebgan_pt', 'FILE:ARG of configs/FILE.py (FILE defaults to '
                    'mnist_fc), e.g. ebgan_pt or celeba:ebgan_pt.')
flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
flags.DEFINE_integer('steps', 20, 'Profiled steps (after warm-up).')
flags.DEFINE_integer('top', 25, 'Ops to list.')
flags.DEFINE_string('lowering', '', "4c2s lowering of a convolutional config, as "
                    "benchmark.py's --lowerings entries (e.g. 'lax'); '' keeps the config's.")

# Kernel names (GPU) -> group, for names the compiled HLO does not hold. First match wins.
KERNEL_GROUPS = (
    ('matmul/conv', r'conv|gemm|cublas|cutlass|xmma|wgmma|cudnn|sm\d+_'),
    ('reduction', r'reduce|norm'),
    ('copy/transpose', r'copy|transpose|memcpy|memset'),
)


def hlo_groups(hlo_text: str) -> tuple[dict[str, str], dict[str, str]]:
  """Instruction name -> group, and -> the JAX op it came from, from the compiled module.

  A fusion counts as matmul/conv when its fused computation holds a dot or a convolution
  (XLA:CPU's YNNPACK fusions and XLA:GPU's cuBLAS/Triton gemm fusions do), as a reduction
  when it holds a reduce, else as elementwise.
  """
  bodies: dict[str, str] = {}
  for block in re.split(r'\n(?=\S)', hlo_text):
    head = block.split(' ', 1)[0].lstrip('%')
    bodies[head] = block
  def group(opcode: str, line: str) -> str:
    text = line
    called = re.search(r'calls=%?([\w.-]+)', line)
    if called and called.group(1) in bodies:
      text += bodies[called.group(1)]
    if re.search(r' (dot|convolution)\(|__cublas|__cudnn|triton_gemm|custom-call.*gemm', text):
      return 'matmul/conv'
    if opcode in ('copy', 'transpose', 'copy-start', 'copy-done'):
      return 'copy/transpose'
    if re.search(r' reduce(-window)?\(', text):
      return 'reduction'
    if opcode in ('fusion', 'add', 'multiply', 'select', 'maximum', 'convert', 'negate'):
      return 'elementwise'
    return 'other'
  groups, sources = {}, {}
  for line in hlo_text.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.-]+) = \S+ ([\w-]+)\(', line)
    if m:
      groups[m.group(1)] = group(m.group(2), line)
      source = re.search(r'op_name="([^"]*)"', line)
      sources[m.group(1)] = source.group(1).replace('jit(step)/', '') if source else ''
  return groups, sources


def group_of(name: str, groups: dict[str, str]) -> str:
  if name in groups:
    return groups[name]
  for group, pattern in KERNEL_GROUPS:
    if re.search(pattern, name, re.IGNORECASE):
      return group
  return 'elementwise' if 'fusion' in name else 'other'


def _device_events(profile) -> dict[str, float]:
  """Total ns per op name on the accelerator planes, else on XLA's CPU worker threads."""
  totals: dict[str, float] = collections.Counter()
  device_planes = [p for p in profile.planes if p.name.startswith('/device:')]
  for plane in device_planes or profile.planes:
    for line in plane.lines:
      if device_planes:
        # GPU planes hold one line of kernels and lines of XLA ops/modules; keep the kernels.
        if 'kernel' not in line.name.lower() and 'stream' not in line.name.lower():
          continue
      elif not line.name.startswith('tf_XLAEigen'):
        continue
      for event in line.events:
        if event.name in ('ThunkExecutor::Execute', 'SlinkyThreadPool::Await'):
          continue
        totals[event.name] += event.duration_ns
  return totals


def main(argv):
  del argv
  config = benchmark.load_config(FLAGS.config)
  config.batch_size = FLAGS.batch_size
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  if FLAGS.lowering:
    benchmark.set_lowering(config, FLAGS.lowering)
  mesh, trainer, state, images, key = benchmark.synthetic_step_inputs(config)
  train_step = step.jit_train_step(trainer, mesh)
  groups_by_name, sources = hlo_groups(train_step.lower(state, images, key).compile().as_text())
  for _ in range(3):
    state, metrics = train_step(state, images, key)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    t = time.perf_counter()
    for _ in range(FLAGS.steps):
      state, metrics = train_step(state, images, key)
    jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t) / FLAGS.steps
    jax.profiler.stop_trace()
    path = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0]
    totals = _device_events(jax.profiler.ProfileData.from_file(path))
  busy = sum(totals.values()) / FLAGS.steps
  print(f'{FLAGS.config} batch {FLAGS.batch_size} on {jax.devices()[0].device_kind}: '
        f'{wall * 1e3:.2f} ms/step wall (under the profiler), {busy / 1e6:.2f} ms of '
        'recorded op time per step')
  groups: dict[str, float] = collections.Counter()
  for name, ns in totals.items():
    groups[group_of(name, groups_by_name)] += ns
  for group, ns in groups.most_common():
    print(f'  {group:15s} {ns / FLAGS.steps / 1e6:8.3f} ms  {100 * ns / max(sum(totals.values()), 1):5.1f}%')
  print(f'\nTop {FLAGS.top} ops (ms per step, share, group):')
  for name, ns in totals.most_common(FLAGS.top):
    print(f'  {ns / FLAGS.steps / 1e6:8.3f} ms {100 * ns / sum(totals.values()):5.1f}%  '
          f'{group_of(name, groups_by_name):14s} {name[:40]:40s} {sources.get(name, "")[-60:]}')


if __name__ == '__main__':
  app.run(main)
