"""Times forward + backward of the 64x64 models (App. C) for each "4c2s" lowering, on CPU.

  python -m experiments.conv_benchmark [--batch 64] [--repeats 3] [--models ae,g,binary]

For each model and lowering it compiles one `jax.grad` of a scalar function of the output
w.r.t. parameters and input (what a train step does), runs it `--repeats` times and prints
the best time as images per second. The variants are interleaved round by round so that
load from other processes hits them alike.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from ebgan_jax.models import dcgan

# (transpose_impl, conv_impl) pairs; 'lax' everywhere is the plain flax/XLA lowering.
VARIANTS = {
    'lax': ('lax', 'lax'),
    'subpixel': ('subpixel', 'lax'),
    'subpixel+s2d': ('subpixel', 'space_to_depth'),
    'phase': ('phase', 'lax'),
    'phase+s2d': ('phase', 'space_to_depth'),
    'phase_matmul+s2d': ('phase_matmul', 'space_to_depth'),
    'auto': ('auto', 'auto'),
}
IMAGE_SHAPE = (64, 64, 3)


def _model(name: str, transpose_impl: str, conv_impl: str):
  if name == 'ae':
    return dcgan.ConvAutoEncoder(dcgan.DCGAN64_ENCODER, dcgan.DCGAN64_DECODER, IMAGE_SHAPE,
                                 conv_impl=conv_impl, transpose_impl=transpose_impl)
  if name == 'g':
    return dcgan.ConvGenerator(dcgan.DCGAN64_G, IMAGE_SHAPE, transpose_impl=transpose_impl)
  if name == 'binary':
    return dcgan.ConvDiscriminator(dcgan.DCGAN64_BINARY_D, IMAGE_SHAPE, conv_impl=conv_impl)
  raise ValueError(f'Unknown model {name!r}.')


def _grad_fn(name: str, model, batch: int):
  """A jitted grad of sum(output^2) w.r.t. (params, input), and its arguments."""
  key = jax.random.key(0, impl='rbg')  # rbg: threefry compiles slowly on XLA:CPU.
  if name == 'g':
    inputs = jax.random.normal(key, (batch, 100))  # [B, latent]
  else:
    inputs = jax.random.uniform(key, (batch, *IMAGE_SHAPE), minval=-1.0, maxval=1.0)
  variables = model.init(jax.random.key(1, impl='rbg'), inputs, train=True)

  def loss(params, x):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    out = out[0] if isinstance(out, tuple) else out
    return jnp.sum(out.astype(jnp.float32)**2)

  return jax.jit(jax.grad(loss, argnums=(0, 1))), (variables['params'], inputs)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = FLAGS
  print(f'backend={jax.default_backend()} devices={jax.devices()} batch={args.batch}')
  for name in args.models.split(','):
    fns = {}
    for variant in args.variants.split(','):
      transpose_impl, conv_impl = VARIANTS[variant]
      # Label by the lowerings the model actually has (G has no strided convolution, the
      # binary D no transposed one), skipping variants that coincide for it.
      label = '+'.join(impl for impl, used in ((transpose_impl, name != 'binary'),
                                               (conv_impl, name != 'g')) if used)
      if label not in fns:
        fns[label] = _grad_fn(name, _model(name, transpose_impl, conv_impl), args.batch)
    best = {}
    for variant, (fn, fn_args) in fns.items():  # Compile (and warm up) every variant first.
      jax.block_until_ready(fn(*fn_args))
    for _ in range(args.repeats):
      for variant, (fn, fn_args) in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*fn_args))
        elapsed = time.perf_counter() - start
        best[variant] = min(best.get(variant, elapsed), elapsed)
    for variant, seconds in best.items():
      print(f'{name:7s} {variant:20s} {seconds:7.3f} s/step  {args.batch / seconds:8.1f} img/s',
            flush=True)


if __name__ == '__main__':
  flags.DEFINE_integer('batch', 64, 'Batch size.')
  flags.DEFINE_integer('repeats', 3, 'Timed repeats (the best is reported).')
  flags.DEFINE_string('models', 'ae,g,binary', 'Models to time, comma-separated.')
  flags.DEFINE_string('variants', ','.join(VARIANTS), 'Lowerings to time, comma-separated.')
  FLAGS = flags.FLAGS
  app.run(main)
