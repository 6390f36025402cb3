"""Stride-2, 4x4 (de)convolutions, the "4c2s" layers of App. C, with backend-specific lowerings.

Every up- and down-sampling layer of the deep convolutional models (Sec. 4.3, 4.4, App. C) is
a "(n)4c2s" layer: kernel 4, stride 2, padding 1, so it exactly halves (convolution, encoder)
or doubles (fractional-strided convolution, generator and decoder) the spatial size.

`ConvTranspose2x` keeps `nn.ConvTranspose`'s parameters (`kernel` [4, 4, C_in, C_out] and
`bias` [C_out]) and computes exactly `jax.lax.conv_transpose(x, kernel, (2, 2), 'SAME')`
(flax's convention, `transpose_kernel=False`; PyTorch's `ConvTranspose2d(k=4, s=2, p=1)` is
the same map with a spatially flipped kernel). Its lowerings:

- 'lax': `lax.conv_transpose`, i.e. a stride-1 convolution of the zero-dilated input. On GPU
  XLA hands it (and its gradients) to cuDNN's backward-data/backward-filter convolutions.
- 'subpixel': the phase decomposition. Output pixel (2m + a, 2l + b) only ever meets the
  kernel taps K[a::2, b::2] (a 2x2 sub-kernel), applied to input rows m - 1 + a, m + a and
  columns l - 1 + b, l + b. Embedding the four sub-kernels in one 3x3 kernel with 4 * C_out
  outputs gives a stride-1 SAME convolution of the *undilated* input followed by
  depth-to-space. It does 9/4 of the multiply-adds that are needed (the zero taps), but it is
  a single plain convolution.
- 'phase': the same decomposition without the zero taps: four stride-1 2x2 convolutions (one
  per phase, each of the suitably padded input), interleaved. Exactly the multiply-adds of
  the transposed convolution.
- 'phase_matmul': the four phases as one im2col matrix product (the 2x2 windows of the
  1-padded input times the four sub-kernels side by side), each phase sliced out at its
  offset; (H + 1)(W + 1) / (H W) of the exact multiply-adds. Forward and both gradients are
  matrix products, no convolution.
- 'col2im': one product x @ K[C_in, 16 C_out] (every tap of every input pixel) and a sum of 4
  shifted tap planes per phase. Exact multiply-adds and no im2col copy of the input.

`Conv2x` is the encoder's "4c2s" convolution with `nn.Conv`'s parameters: 'lax'
(`lax.conv_general_dilated`) or 'space_to_depth' (a space-to-depth reshuffle plus one matrix
product, an exact im2col of the 4x4 stride-2 windows).

XLA:CPU (jax 0.10.2) runs its matrix products through YNNPACK but its convolutions' weight
gradients slowly, so on CPU the products win. Forward + backward (w.r.t. input and kernel)
of each layer at batch 64 (64x64 models), best of 3 interleaved runs, in ms, on the 2-core
Xeon shared with other jobs (load average 2.8-3.2, so +-30%; PyTorch eager's figures, from
`experiments/torch_reference.py`'s layers in a quieter minute, are only a guide):

  ConvTranspose2x   in -> out, C_in -> C_out   'subpixel'  'phase'  'phase_matmul'  'col2im'
                    4 ->  8,   512 -> 256         217         86         106           104
                    8 -> 16,   256 -> 128         164         88          94           138
                   16 -> 32,   128 ->  64         257        279         106           212
                   32 -> 64,    64 ->   3          74        112          89            36
  Conv2x            in -> out, C_in -> C_out   'lax'  'space_to_depth'
                   64 -> 32,     3 ->  64         52         13
                   32 -> 16,    64 -> 128        168        100
                   16 ->  8,   128 -> 256        103         80

At 128x128 (ImageNet, batch 16, load 3.3-4.3) the same holds, and 'phase' is also slow where
C_in is not a multiple of 128 (the generator's inputs with noise planes: 1088 -> 512 at 4x4,
'phase' 224 ms vs 'phase_matmul' 111 ms), as is 'col2im' with many output channels at large
sizes (68 -> 64 at 64x64: 692 ms vs 258 ms); 'col2im' wins clearly only on the 3-channel
output layer (33 ms vs 89). So 'auto' on CPU is 'phase_matmul', except 'col2im' for layers
with at most 16 output channels, and 'space_to_depth' for `Conv2x`. Whole 64x64 models under
the same load (`python -m experiments.conv_benchmark`): generator 'auto' 0.65 s vs 'phase'
0.78 s per step of 64; auto-encoder 'auto' 0.44 s vs 'phase' + 'space_to_depth' 0.72 s. The
earlier 'subpixel' CPU choice measured 0.71 s (generator) and 0.76 s (auto-encoder) in a
quieter run where 'phase' took 0.49 s and 'phase' + 'space_to_depth' 0.60 s. XLA flags
(`--xla_cpu_use_onednn`, `--xla_cpu_use_xnnpack`, `--xla_cpu_experimental_ynn_fusion_type`)
changed nothing measurable. Train-step numbers: BENCHMARKS.md, "CPU: convolutional configs".
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

Impl = Literal['auto', 'lax', 'subpixel', 'phase', 'phase_matmul', 'col2im']
ConvImpl = Literal['auto', 'lax', 'space_to_depth']

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
# lax.conv_transpose padding of the dilated input giving out = 2 * in for a 4x4 kernel,
# stride 2 (what 'SAME' resolves to; PyTorch's p=1 maps to k - 1 - p = 2 here).
_TRANSPOSE_PADDING = ((2, 2), (2, 2))
_CONV_PADDING = ((1, 1), (1, 1))  # "4c2s" convolution: padding 1, out = in / 2.

# 'auto' choices, per backend (see the module docstring and experiments/conv_benchmark.py).
# GPU, measured on an NVIDIA H200 (jax 0.11.2, fp32, batch 64, fwd + bwd of the 64x64 models):
# generator 'lax' 20,784 img/s vs 'subpixel' 43,961; auto-encoder D 'lax'+'lax' 19,230,
# 'subpixel'+'lax' 39,734, 'subpixel'+'space_to_depth' 46,112; binary D 'lax' 58,269 vs
# 'space_to_depth' 69,920. One dense stride-1 convolution beats cuDNN's strided and dilated
# kernels at these sizes despite the 9/4 multiply-adds. The exact four-phase form ('phase'),
# whole EBGAN-PT train steps on an H100 in bf16 at batch 256: CelebA 27,132 img/s against
# 37,009 for 'subpixel', ImageNet-128 6,143 against 7,371 (BENCHMARKS.md): four 2x2
# convolutions use cuDNN worse than one 3x3 one, so 'subpixel' stays. TPU: not measured;
# plain lowering.
# CPU (2-core Xeon, jax 0.10.2; see the module docstring): the im2col product for the
# transposed convolutions except those with few output channels (the RGB output layers), where
# col2im is fastest; the space-to-depth product for the strided ones.
_AUTO_TRANSPOSE_IMPL = {'cpu': 'phase_matmul', 'gpu': 'subpixel'}
_AUTO_CONV_IMPL = {'cpu': 'space_to_depth', 'gpu': 'space_to_depth'}
_CPU_COL2IM_MAX_FEATURES = 16


def resolve_impl(impl: str, table: dict[str, str], backend: str | None = None) -> str:
  """Turns 'auto' into the lowering chosen for `backend` (default: jax's default backend)."""
  if impl != 'auto':
    return impl
  return table.get(backend or jax.default_backend(), 'lax')


def resolve_transpose_impl(impl: str, features: int, backend: str | None = None) -> str:
  """`resolve_impl` for `ConvTranspose2x`, whose CPU choice also depends on its output width."""
  backend = backend or jax.default_backend()
  if impl == 'auto' and backend == 'cpu' and features <= _CPU_COL2IM_MAX_FEATURES:
    return 'col2im'
  return resolve_impl(impl, _AUTO_TRANSPOSE_IMPL, backend)


def conv_transpose_2x_lax(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """"4c2s" transposed convolution via `lax.conv_transpose`.

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out], flax's (non-flipped) `ConvTranspose` layout.
    precision: passed to the convolution.
  Returns:
    [B, 2H, 2W, C_out].
  """
  return jax.lax.conv_transpose(x, kernel, (2, 2), _TRANSPOSE_PADDING,
                                dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
  """Embeds the four 2x2 phase sub-kernels of a 4x4 kernel in one 3x3 kernel.

  Derivation (1-D; the 2-D case is the product): lax.conv_transpose dilates x to d (d[2i] =
  x[i], zeros between), pads it by 2 and correlates it with K, so y[o] = sum_k d[o + k - 2]
  K[k]. For o = 2m only even taps meet a sample: y[2m] = K[0] x[m-1] + K[2] x[m]; for
  o = 2m + 1 only odd ones: y[2m+1] = K[1] x[m] + K[3] x[m+1]. On the 3-tap window
  (x[m-1], x[m], x[m+1]) phase a = 0 has weights (K0, K2, 0) and phase a = 1 (0, K1, K3):
  sub-kernel K[a::2] placed at window offset a.

  Args:
    kernel: [4, 4, C_in, C_out].
  Returns:
    [3, 3, C_in, 4 * C_out], output channels ordered (a, b, C_out) for phase (a, b).
  """
  c_in, c_out = kernel.shape[2:]
  phases = []
  for a in range(2):
    for b in range(2):
      sub = kernel[a::2, b::2]  # [2, 2, C_in, C_out]
      phases.append(jnp.pad(sub, ((a, 1 - a), (b, 1 - b), (0, 0), (0, 0))))  # [3, 3, C_in, C_out]
  return jnp.stack(phases, axis=-2).reshape(3, 3, c_in, 4 * c_out)


def conv_transpose_2x_subpixel(x: jax.Array, kernel: jax.Array,
                               precision: Any = None) -> jax.Array:
  """"4c2s" transposed convolution as a 3x3 stride-1 convolution plus depth-to-space.

  Same function as `conv_transpose_2x_lax` (see `subpixel_kernel` for the derivation).
  """
  batch, height, width, _ = x.shape
  c_out = kernel.shape[-1]
  y = jax.lax.conv_general_dilated(x, subpixel_kernel(kernel), (1, 1), _CONV_PADDING,
                                   dimension_numbers=_DIMENSION_NUMBERS,
                                   precision=precision)  # [B, H, W, 4 * C_out]
  y = y.reshape(batch, height, width, 2, 2, c_out)      # [B, m, l, a, b, C_out]
  y = y.transpose(0, 1, 3, 2, 4, 5)                     # [B, m, a, l, b, C_out]
  return y.reshape(batch, 2 * height, 2 * width, c_out)  # row 2m + a, column 2l + b


def conv_transpose_2x_phase(x: jax.Array, kernel: jax.Array,
                            precision: Any = None) -> jax.Array:
  """"4c2s" transposed convolution as four exact 2x2 phase convolutions plus depth-to-space.

  Same function as `conv_transpose_2x_lax`. From `subpixel_kernel`'s derivation, in 1-D
  output phase a (rows 2m + a) is the 2-tap correlation of x with K[a::2] over the window
  (x[m - 1 + a], x[m + a]), i.e. a stride-1 'VALID' convolution of x padded by (1 - a, a).
  In 2-D phase (a, b) is the 2x2 convolution with the sub-kernel K[a::2, b::2] of x padded by
  (1 - a, a) rows and (1 - b, b) columns. The four phases do exactly the multiply-adds of the
  transposed convolution (4/9 of 'subpixel''s), as four separate convolutions.

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out], flax's (non-flipped) `ConvTranspose` layout.
    precision: passed to the convolutions.
  Returns:
    [B, 2H, 2W, C_out].
  """
  batch, height, width, _ = x.shape
  c_out = kernel.shape[-1]
  phases = [
      jax.lax.conv_general_dilated(x, kernel[a::2, b::2], (1, 1), ((1 - a, a), (1 - b, b)),
                                   dimension_numbers=_DIMENSION_NUMBERS, precision=precision)
      for a in range(2) for b in range(2)]  # 4 x [B, H, W, C_out], phase (a, b)
  return _depth_to_space(phases)


def _depth_to_space(phases: list[jax.Array]) -> jax.Array:
  """Interleaves the four phases [B, H, W, C], (a, b) = (0, 0), (0, 1), (1, 0), (1, 1)."""
  batch, height, width, c_out = phases[0].shape
  y = jnp.stack(phases, axis=3).reshape(batch, height, width, 2, 2, c_out)  # [B, m, l, a, b, C]
  y = y.transpose(0, 1, 3, 2, 4, 5)                      # [B, m, a, l, b, C_out]
  return y.reshape(batch, 2 * height, 2 * width, c_out)  # row 2m + a, column 2l + b


def conv_transpose_2x_phase_matmul(x: jax.Array, kernel: jax.Array,
                                   precision: Any = None) -> jax.Array:
  """"4c2s" transposed convolution as the four phases of one im2col matrix product.

  Same function as `conv_transpose_2x_phase`: with xp the input padded by 1, phase (a, b) at
  (m, l) is the 2x2 window of xp at (m + a, l + b) contracted with K[a::2, b::2]. The
  (H + 1) x (W + 1) windows of xp are gathered once ([.., 4 * C_in]), multiplied by the
  four sub-kernels side by side ([4 * C_in, 4 * C_out]) in a single dot, and each phase is
  sliced out at its offset. Multiply-adds: (H + 1)(W + 1) / (H W) of the exact count (1.13x
  at 16x16). All three products of the forward and backward pass are plain matrix products,
  which XLA:CPU runs faster than its convolutions' weight gradients.

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out].
    precision: passed to the dot.
  Returns:
    [B, 2H, 2W, C_out].
  """
  batch, height, width, c_in = x.shape
  c_out = kernel.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  windows = jnp.concatenate([xp[:, u:u + height + 1, v:v + width + 1]
                             for u in range(2) for v in range(2)], axis=-1)  # (u, v, C_in)
  sub_kernels = jnp.stack([kernel[a::2, b::2].reshape(4 * c_in, c_out)
                           for a in range(2) for b in range(2)], axis=1)  # [4 C_in, 4, C_out]
  y = jnp.dot(windows.reshape(-1, 4 * c_in), sub_kernels.reshape(4 * c_in, 4 * c_out),
              precision=precision).reshape(batch, height + 1, width + 1, 4, c_out)
  return _depth_to_space([y[:, a:a + height, b:b + width, 2 * a + b]
                          for a in range(2) for b in range(2)])


def conv_transpose_2x_col2im(x: jax.Array, kernel: jax.Array,
                             precision: Any = None) -> jax.Array:
  """"4c2s" transposed convolution as one matrix product and a col2im sum of shifted taps.

  Same function as `conv_transpose_2x_lax`: every input pixel i is multiplied by all 16 taps
  at once (x [B H W, C_in] @ K [C_in, 16 C_out]), then each output pixel adds the 4 products
  that land on it; by `subpixel_kernel`'s derivation, in 1-D y[2m + a] = x[m - 1 + a] K[a] +
  x[m + a] K[a + 2]. Exact multiply-adds, one dense product whose contraction is C_in, and
  no im2col copy of the input: the cheapest form when C_out is small (the RGB output layers),
  where a product with 4 C_out columns would be mostly memory traffic.

  Args:
    x: [B, H, W, C_in].
    kernel: [4, 4, C_in, C_out].
    precision: passed to the dot.
  Returns:
    [B, 2H, 2W, C_out].
  """
  batch, height, width, c_in = x.shape
  c_out = kernel.shape[-1]
  taps = jnp.dot(x.reshape(-1, c_in), kernel.transpose(2, 0, 1, 3).reshape(c_in, 16 * c_out),
                 precision=precision).reshape(batch, height, width, 4, 4, c_out)
  taps = jnp.pad(taps, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))  # input index i + 1
  phases = []
  for a in range(2):
    for b in range(2):  # Input rows m - 1 + a + u meet tap a + 2u (u = 0, 1); columns alike.
      phases.append(sum(taps[:, a + u:a + u + height, b + v:b + v + width, a + 2 * u, b + 2 * v]
                        for u in range(2) for v in range(2)))
  return _depth_to_space(phases)


def conv_2x_lax(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """"4c2s" convolution: [B, H, W, C_in] -> [B, H/2, W/2, C_out], kernel [4, 4, C_in, C_out]."""
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), _CONV_PADDING,
                                      dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


def conv_2x_space_to_depth(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """"4c2s" convolution as space-to-depth and one matrix product (exact im2col).

  With xp the input padded by 1, y[o] = sum_k xp[2o + k] K[k]. Writing k = 2u + a
  (u, a in {0, 1}) and splitting xp into 2-pixel blocks s[j, a] = xp[2j + a] turns the
  window of output o into the blocks j = o and j = o + 1; the 16 taps of each window are
  gathered with four block shifts, then contracted with K in a single dot.

  Args:
    x: [B, H, W, C_in], H and W even.
    kernel: [4, 4, C_in, C_out].
    precision: passed to the dot.
  Returns:
    [B, H/2, W/2, C_out].
  """
  batch, height, width, c_in = x.shape
  if height % 2 or width % 2:
    raise ValueError(f'Conv2x needs an even spatial size, got {height}x{width}.')
  c_out = kernel.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = height // 2, width // 2
  blocks = xp.reshape(batch, h + 1, 2, w + 1, 2, c_in)  # [B, j, a, i, b, C_in]
  windows = jnp.stack([blocks[:, u:u + h, :, v:v + w] for u in range(2) for v in range(2)])
  windows = windows.reshape(2, 2, batch, h, 2, w, 2, c_in)  # [u, v, B, o, a, q, b, C_in]
  windows = windows.transpose(2, 3, 5, 0, 4, 1, 6, 7)        # [B, o, q, u, a, v, b, C_in]
  y = jnp.dot(windows.reshape(batch * h * w, 16 * c_in), kernel.reshape(16 * c_in, c_out),
              precision=precision)  # taps in (4x4 row 2u + a, column 2v + b, C_in) order
  return y.reshape(batch, h, w, c_out)


_TRANSPOSE_IMPLS = {'lax': conv_transpose_2x_lax, 'subpixel': conv_transpose_2x_subpixel,
                    'phase': conv_transpose_2x_phase,
                    'phase_matmul': conv_transpose_2x_phase_matmul,
                    'col2im': conv_transpose_2x_col2im}
_CONV_IMPLS = {'lax': conv_2x_lax, 'space_to_depth': conv_2x_space_to_depth}


def _kernel_and_bias(layer: nn.Module, x: jax.Array):
  """A 4x4 layer's kernel [4, 4, C_in, F] and bias [F] (or None), promoted with x to its dtype."""
  kernel = layer.param('kernel', layer.kernel_init, (4, 4, x.shape[-1], layer.features),
                       layer.param_dtype)
  bias = (layer.param('bias', layer.bias_init, (layer.features,), layer.param_dtype)
          if layer.use_bias else None)
  return promote_dtype(x, kernel, bias, dtype=layer.dtype)


class ConvTranspose2x(nn.Module):
  """"(features)4c2s" fractional-strided convolution (App. C): [B, H, W, C] -> [B, 2H, 2W, F].

  Same parameters and function as `nn.ConvTranspose(features, (4, 4), strides=(2, 2),
  padding='SAME')`; `impl` only changes how XLA computes it ('auto': on CPU 'phase_matmul', or
  'col2im' for at most 16 features; 'subpixel' on GPU; 'lax' elsewhere; see the module
  docstring).
  """
  features: int
  use_bias: bool = True
  impl: Impl = 'auto'
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [B, H, W, C_in] to [B, 2H, 2W, features]."""
    impl = resolve_transpose_impl(self.impl, self.features)
    if impl not in _TRANSPOSE_IMPLS:
      raise ValueError(f"ConvTranspose2x impl must be 'auto' or one of "
                       f'{sorted(_TRANSPOSE_IMPLS)}, got {self.impl!r}.')
    x, kernel, bias = _kernel_and_bias(self, x)
    y = _TRANSPOSE_IMPLS[impl](x, kernel, self.precision)  # [B, 2H, 2W, F]
    return y + bias if bias is not None else y


class Conv2x(nn.Module):
  """"(features)4c2s" strided convolution (App. C): [B, H, W, C] -> [B, H/2, W/2, F].

  Same parameters and function as `nn.Conv(features, (4, 4), strides=(2, 2),
  padding=((1, 1), (1, 1)))`; `impl` only changes how XLA computes it.
  """
  features: int
  use_bias: bool = True
  impl: ConvImpl = 'auto'
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps x [B, H, W, C_in] to [B, H/2, W/2, features]."""
    impl = resolve_impl(self.impl, _AUTO_CONV_IMPL)
    if impl not in _CONV_IMPLS:
      raise ValueError(f"Conv2x impl must be 'auto' or one of {sorted(_CONV_IMPLS)}, "
                       f'got {self.impl!r}.')
    x, kernel, bias = _kernel_and_bias(self, x)
    y = _CONV_IMPLS[impl](x, kernel, self.precision)  # [B, H/2, W/2, F]
    return y + bias if bias is not None else y
