"""PyTorch eager reference: images/s of one EBGAN-PT iteration with App. C's conv models.

  /path/to/torch-venv/bin/python experiments/torch_reference.py [--configs=dcgan64,imagenet128]
  python3 experiments/torch_reference.py --device=cuda --bf16 --channels_last --batch=256 \
      [--compile]   # on a GPU: bf16 autocast (fp32 parameters and Adam), as benchmark.py's
                    # --dtype=bfloat16

This file exists only to measure the baseline that issue #5 quotes (a PyTorch 2.x eager
version of the same networks on the same CPU) next to `experiments/benchmark.py`'s JAX
numbers; it is not part of the library, PyTorch is not a project dependency, and nothing
imports it. It needs only `torch` and `absl-py` (run it from a separate virtual environment).

The networks are those of `ebgan_jax/models/dcgan.py` (App. C): the 64x64 DCGAN-like
generator (512)4c-(256)4c2s-(128)4c2s-(64)4c2s-(3)4c2s with BN + ReLU and tanh, the
auto-encoder D (64)4c2s-(128)4c2s-(256)4c2s / (128)4c2s-(64)4c2s-(3)4c2s with LeakyReLU(0.2)
and BN after every layer but D's input and output layers, and the ImageNet-128 pair (G with
noise planes 64-32-16-8-4 concatenated before each 4c2s layer, a (3)3c output; encoder up to
512, decoder back from 256). Layers followed by BN have no bias; BN momentum 0.9 in flax's
convention (0.1 in PyTorch's), epsilon 1e-5; weights N(0, 0.02) in G, N(0, 0.002) in D.

One iteration is `ebgan_jax.step.Trainer.train_step`'s: G(z) once; the D update (Eq. 1,
real and generated batches through D separately) with Adam; then the G update (Eq. 2 plus
0.1 x the pulling-away term, Eq. 14) under the updated D, whose parameters take no gradient
there. Adam: lr 0.0002, betas (0.5, 0.999). Synthetic images, as in benchmark.py.
"""

from __future__ import annotations

import os
import time

import torch
from absl import app, flags
from torch import nn

LEAKY_SLOPE = 0.2
BN_MOMENTUM = 0.1  # PyTorch's convention: flax's momentum 0.9.
LATENT = 100
CONFIGS = {  # name: (image size, margin m, default batch); Sec. 4.3, 4.4.
    'dcgan64': (64, 20.0, 64),
    'imagenet128': (128, 40.0, 16),
}


def _init(module: nn.Module, std: float) -> nn.Module:
  for m in module.modules():
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
      nn.init.normal_(m.weight, 0.0, std)
      if m.bias is not None:
        nn.init.zeros_(m.bias)
  return module


def _up(c_in: int, c_out: int, bias: bool = False) -> nn.ConvTranspose2d:
  return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias)  # "(n)4c2s", out = 2 x in


def _down(c_in: int, c_out: int, bias: bool = False) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 4, 2, 1, bias=bias)  # "(n)4c2s", out = in / 2


class Generator(nn.Module):
  """(f0)4c then (f_i)4c2s layers with BN + ReLU, optional noise planes, tanh output."""

  def __init__(self, features, output_layer: str, noise_planes=()):
    super().__init__()
    self.noise_planes = tuple(noise_planes)
    self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
    c = LATENT
    for i, f in enumerate(features):
      if i == 0:
        self.convs.append(nn.ConvTranspose2d(c, f, 4, 1, 0, bias=False))  # 1x1 -> 4x4
      else:
        self.convs.append(_up(c + (self.noise_planes[i - 1] if self.noise_planes else 0), f))
      self.bns.append(nn.BatchNorm2d(f, momentum=BN_MOMENTUM))
      c = f
    self.output = (_up(c, 3, bias=True) if output_layer == '4c2s'
                   else nn.Conv2d(c, 3, 3, 1, 1, bias=True))
    _init(self, 0.02)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = z[:, :, None, None]  # [B, latent, 1, 1]
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      if i > 0 and self.noise_planes:
        noise = torch.randn(h.shape[0], self.noise_planes[i - 1], *h.shape[2:],
                            device=h.device, dtype=h.dtype)
        h = torch.cat([h, noise], dim=1)
      h = torch.relu(bn(conv(h)))
    return torch.tanh(self.output(h))


class AutoEncoder(nn.Module):
  """Encoder (no BN on the input layer), code, decoder (no BN nor activation on the output)."""

  def __init__(self, encoder, decoder):
    super().__init__()
    self.enc = nn.ModuleList()
    self.enc_bn = nn.ModuleList()
    c = 3
    for i, f in enumerate(encoder):
      self.enc.append(_down(c, f, bias=i == 0))
      self.enc_bn.append(nn.BatchNorm2d(f, momentum=BN_MOMENTUM) if i > 0 else nn.Identity())
      c = f
    self.dec = nn.ModuleList()
    self.dec_bn = nn.ModuleList()
    for f in decoder:
      self.dec.append(_up(c, f))
      self.dec_bn.append(nn.BatchNorm2d(f, momentum=BN_MOMENTUM))
      c = f
    self.output = _up(c, 3, bias=True)
    _init(self, 0.002)

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = x
    for conv, bn in zip(self.enc, self.enc_bn):
      h = nn.functional.leaky_relu(bn(conv(h)), LEAKY_SLOPE)
    code = h
    for conv, bn in zip(self.dec, self.dec_bn):
      h = nn.functional.leaky_relu(bn(conv(h)), LEAKY_SLOPE)
    return self.output(h), code


def models(name: str) -> tuple[nn.Module, nn.Module]:
  if name == 'dcgan64':
    return Generator((512, 256, 128, 64), '4c2s'), AutoEncoder((64, 128, 256), (128, 64))
  if name == 'imagenet128':
    return (Generator((1024, 512, 256, 128, 64, 64), '3c', (64, 32, 16, 8, 4)),
            AutoEncoder((64, 128, 256, 512), (256, 128, 64)))
  raise ValueError(f'Unknown config {name!r}; use one of {sorted(CONFIGS)}.')


def energy(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
  """Eq. (13): ||Dec(Enc(x)) - x||_2 per sample."""
  return (rec - x).flatten(1).norm(dim=1)


def pulling_away_term(code: torch.Tensor) -> torch.Tensor:
  """Eq. (14): mean squared cosine similarity of the codes over pairs i != j."""
  s = nn.functional.normalize(code.flatten(1), dim=1)
  cosine = s @ s.T
  n = s.shape[0]
  return (cosine.square().sum() - cosine.diagonal().square().sum()) / (n * (n - 1))


def make_step(name: str, batch: int, device: str = 'cpu', bf16: bool = False,
              channels_last: bool = False, compile_models: bool = False):
  """One EBGAN-PT iteration (D update, then G update) as a closure over fresh models.

  On a GPU: `bf16` runs G and D under bf16 autocast (parameters, losses and Adam stay fp32),
  `channels_last` keeps activations NHWC (cuDNN's fast layout for bf16), `compile_models`
  wraps G and D in `torch.compile` (fused elementwise and BatchNorm kernels).
  """
  size, margin, _ = CONFIGS[name]
  g, d = models(name)
  g, d = g.to(device), d.to(device)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  g, d = g.to(memory_format=memory_format), d.to(memory_format=memory_format)
  opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  real = (torch.rand(batch, 3, size, size, device=device) * 2 - 1).to(
      memory_format=memory_format)
  run_g, run_d = (torch.compile(g), torch.compile(d)) if compile_models else (g, d)
  autocast = torch.autocast(device_type=device.split(':')[0], dtype=torch.bfloat16,
                            enabled=bf16)

  def train_step():
    with autocast:
      _train_step()

  def _train_step():
    g, d = run_g, run_d
    z = torch.randn(batch, LATENT, device=device)
    fake = g(z)
    # D update (Eq. 1): G(z) is a constant.
    d.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    e_real = energy(real, d(real)[0].float())
    e_fake = energy(fake.detach().float(), d(fake.detach())[0].float())
    (e_real + torch.relu(margin - e_fake)).mean().backward()
    opt_d.step()
    # G update (Eq. 2 + 0.1 x Eq. 14) under the updated D.
    d.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    rec, code = d(fake)
    (energy(fake.float(), rec.float()).mean()
     + 0.1 * pulling_away_term(code.float())).backward()
    opt_g.step()

  return train_step


def make_parts(name: str, batch: int):
  """Forward + backward (w.r.t. parameters and input) of G and of D alone, as
  `experiments/conv_benchmark.py` times them: the loss is the sum of the squared output."""
  size = CONFIGS[name][0]
  g, d = models(name)
  z = torch.randn(batch, LATENT, requires_grad=True)
  x = (torch.rand(batch, 3, size, size) * 2 - 1).requires_grad_(True)

  def g_part():
    g.zero_grad(set_to_none=True)
    g(z).square().sum().backward()

  def d_part():
    d.zero_grad(set_to_none=True)
    d(x)[0].square().sum().backward()

  return {f'{name} G fwd+bwd': g_part, f'{name} D fwd+bwd': d_part}


def _sync() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def time_step(train_step, seconds: float, min_steps: int) -> float:
  """Seconds per step over at least `min_steps` steps and `seconds` seconds."""
  steps, start = 0, time.perf_counter()
  _sync()
  while True:
    train_step()
    steps += 1
    if steps % 10 and steps >= min_steps and time.perf_counter() - start < seconds:
      continue  # A GPU runs ahead; synchronize every 10 steps and at the end.
    _sync()
    elapsed = time.perf_counter() - start
    if elapsed >= seconds and steps >= min_steps:
      return elapsed / steps


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  args = FLAGS
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
        f'{os.cpu_count()} cores, device {args.device}, bf16 autocast {args.bf16}, '
        f'channels_last {args.channels_last}, compile {args.compile}')
  steps = {}  # (what, batch) -> a function running one step of it.
  for name in args.configs.split(','):
    batch = args.batch or CONFIGS[name][2]
    steps[f'{name} step', batch] = make_step(name, batch, args.device, args.bf16,
                                             args.channels_last, args.compile)
    if args.parts:
      steps.update({(part, batch): fn for part, fn in make_parts(name, batch).items()})
  for train_step in steps.values():
    for _ in range(args.warmup_steps):
      train_step()
    _sync()
  best = {}
  for i in range(args.rounds):  # Round by round, so that load hits all configs alike.
    for key, train_step in steps.items():
      seconds = time_step(train_step, args.seconds, args.min_steps)
      best[key] = min(best.get(key, seconds), seconds)
      print(f'round {i + 1}: torch {key[0]}, batch {key[1]}: {seconds:.3f} s/step, '
            f'{key[1] / seconds:.1f} img/s; load average {os.getloadavg()[0]:.2f}', flush=True)
  mode = 'compile' if args.compile else 'eager'
  for (name, batch), seconds in best.items():
    print(f'| torch {mode} {name} | {batch} | {batch / seconds:.1f} | {seconds:.3f} |')


if __name__ == '__main__':
  flags.DEFINE_string('configs', ','.join(CONFIGS), 'Configs to time, comma-separated.')
  flags.DEFINE_integer('batch', 0, '0: 64 at 64x64, 16 at 128x128.')
  flags.DEFINE_integer('threads', 2, 'torch CPU threads.')
  flags.DEFINE_float('seconds', 10.0, 'Timed seconds per measurement.')
  flags.DEFINE_integer('min_steps', 2, 'Timed steps per measurement at least.')
  flags.DEFINE_integer('warmup_steps', 2, 'Untimed steps first.')
  flags.DEFINE_integer('rounds', 1, 'Timed rounds over all configs.')
  flags.DEFINE_string('device', 'cpu', "torch device, e.g. 'cuda'.")
  flags.DEFINE_bool('bf16', False, 'bf16 autocast (fp32 parameters).')
  flags.DEFINE_bool('channels_last', False, 'NHWC activations.')
  flags.DEFINE_bool('compile', False, 'torch.compile G and D.')
  flags.DEFINE_bool('parts', False, 'Also time G and D forward + backward alone.')
  FLAGS = flags.FLAGS
  app.run(main)
