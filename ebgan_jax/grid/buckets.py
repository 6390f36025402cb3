"""Buckets: which runs of a grid share one padded population program, and what that costs.

With `config.grid.bucketing` on, the runs of a grid that differ only in widths, dropout,
optimizers (`config.grid.bucket_optimizers`) and the per-member fields (seed, lr, margin,
lambda_PT) form one bucket when their widths fall in the same bucket of
`config.grid.bucket_size_g` / `bucket_size_d`: each is a tuple of padded widths, and a width
w goes to the smallest padded width >= w (a width above them all is its own bucket). A
bucket trains as padded populations (`ebgan_jax.padding`) of at most
`config.grid.max_population` members, split into chunks of equal size (to one member), all
padded to one program (`bucket_programs`: the bucket's widest widths, dropout if any of its
runs has it, mixed optimizers if it mixes them), so that they share one compiled program.
Depths (nLayerG, nLayerD) stay apart: their parameter trees differ.

Bucketing is a speed lever, nothing more: run ids, rows and scores are the same with it off
(up to float reassociation; `ebgan_jax.padding`). It trades padding waste (a member pays for
its bucket's widths) against compile work (fewer programs) and launches (bigger
populations). `padding_waste` measures the waste of a bucketing from the member costs below;
the buckets of `configs/mnist_grid.py` are chosen from its table (BENCHMARKS.md).

Member cost per train step (batch B, W_G and W_D the weights of G and D; biases and
BatchNorm are counted too but are small):
- FLOPs: 2 B per weight per matmul pass, 3 passes of G (forward, two backward products) and
  8 of D (the D step's forward and two backward products on the real and the fake batch,
  the G step's forward and input-gradient pass): 2 B (3 W_G + 8 W_D).
- Memory traffic of the parameters: ~43 B per Adam parameter-step (the optimizer's reads of
  params, gradients and both moments, its three writes, the gradient's write and the
  weight reads of the passes; issue 13), 16 B less (the two moments, read and written) for
  SGD. In a program mixing Adam and SGD every member pays Adam's 43 B.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Sequence

import jax
import ml_collections

from ebgan_jax import padding, population

ADAM_BYTES_PER_PARAM = 43
SGD_BYTES_PER_PARAM = ADAM_BYTES_PER_PARAM - 16
BUCKETING = ('auto', 'on', 'off')


def bucketing_on(config: ml_collections.ConfigDict) -> bool:
  """`config.grid.bucketing`: 'on', 'off', or 'auto' (on for a GPU/TPU, off for a CPU).

  On a CPU the padding waste costs its full share of training time, which dwarfs the few
  seconds of compile each program takes there (BENCHMARKS.md); on a GPU the grid is bound
  by compile work and launches.
  """
  value = config.grid.get('bucketing', 'off') if 'grid' in config else 'off'
  if value not in BUCKETING:
    raise ValueError(f'config.grid.bucketing must be one of {BUCKETING}, got {value!r}.')
  if value == 'auto':
    return jax.default_backend() != 'cpu'
  return value == 'on'


def padded_width(width: int, buckets: Sequence[int]) -> int:
  """The smallest padded width in `buckets` that holds `width` (`width` itself if none)."""
  return min([b for b in buckets if b >= width], default=width)


def _fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config fields members of one bucket may differ in."""
  fields = population.MEMBER_FIELDS + padding.PADDED_FIELDS
  if not config.grid.get('bucket_optimizers', True):
    fields = tuple(f for f in fields if f not in ('optim.optim_d', 'optim.optim_g'))
  return fields


def signature(config: ml_collections.ConfigDict) -> str:
  """The config but for the fields members of one bucket may differ in."""
  return population.shared_signature(config, _fields(config))


def bucket_key(config: ml_collections.ConfigDict, sig: str | None = None) -> str:
  """Runs with equal keys train in one padded program (module docstring); `sig` is
  `signature(config)` when the caller has it."""
  grid = config.grid
  size_g = padded_width(config.model.size_g, grid.get('bucket_size_g', ()))
  size_d = padded_width(config.model.size_d, grid.get('bucket_size_d', ()))
  return f'g{size_g}-d{size_d}:' + (signature(config) if sig is None else sig)


def group_points(points: Sequence[ml_collections.ConfigDict], max_size: int, bucketed: bool,
                 signatures: Sequence[str] | None = None) -> list[list[int]]:
  """The populations of a sweep: indices into `points`, in the sweep's order.

  Unbucketed: `population.group_configs` (runs of one parameter shape). Bucketed: each
  bucket in chunks of equal size (to one member), at most `max_size` (0: no bound).
  `signatures`: each point's `signature`, when the caller has them (they are slow to make).
  """
  if not bucketed:
    return population.group_configs(points, max_size)
  buckets: dict[str, list[int]] = {}
  for i, config in enumerate(points):
    sig = None if signatures is None else signatures[i]
    buckets.setdefault(bucket_key(config, sig), []).append(i)
  out = []
  for members in buckets.values():
    chunks = math.ceil(len(members) / max_size) if max_size else 1
    bounds = [round(k * len(members) / chunks) for k in range(chunks + 1)]
    out.extend(members[a:b] for a, b in zip(bounds, bounds[1:]))
  return out


def bucket_programs(points: Sequence[ml_collections.ConfigDict],
                    groups: Sequence[Sequence[int]],
                    signatures: Sequence[str] | None = None
                    ) -> list[ml_collections.ConfigDict]:
  """The padded program of each group: `padding.program_config` of all of `points` in the
  group's bucket (not only the group's), so that a bucket's populations share one program,
  whichever of its runs are finished, and in whichever shard."""
  members: dict[str, list[ml_collections.ConfigDict]] = {}
  keys = []
  for i, config in enumerate(points):
    key = bucket_key(config, None if signatures is None else signatures[i])
    members.setdefault(key, []).append(config)
    keys.append(key)
  programs = {key: padding.program_config(configs) for key, configs in members.items()}
  return [programs[keys[group[0]]] for group in groups]


# -- member costs --------------------------------------------------------------------------------
def weights(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(parameters of G, parameters of D) of a fully-connected config (`models.mlp`)."""
  m = config.model
  pixels = config.image_size * config.image_size * config.channels
  wg, wd = m.size_g, m.size_d
  g = (m.latent_dim * wg + (m.n_layer_g - 2) * wg * wg + wg * pixels + pixels
       + 2 * wg * (m.n_layer_g - 1))  # Dense kernels, the output bias, BN scale and shift.
  d = pixels * wd + wd + (m.n_layer_d - 2) * (wd * wd + 2 * wd)  # Encoder (or hidden) layers.
  d += wd * pixels + pixels if config.loss.kind == 'ebgan' else wd + 1  # Decoder / logit.
  return g, d


def member_cost(config: ml_collections.ConfigDict, program: ml_collections.ConfigDict | None
                = None) -> tuple[float, float]:
  """(FLOPs, bytes of parameter traffic) of one train step of `config` (module docstring),
  run inside `program` (its padded widths and optimizers; default: alone)."""
  shape = program or config
  g, d = weights(shape)
  flops = 2 * config.batch_size * (3 * g + 8 * d)
  per = {'adam': ADAM_BYTES_PER_PARAM, 'sgd': SGD_BYTES_PER_PARAM,
         padding.MIXED_OPTIMIZER: ADAM_BYTES_PER_PARAM}
  return flops, per[shape.optim.optim_g] * g + per[shape.optim.optim_d] * d


def padding_waste(points: Sequence[ml_collections.ConfigDict], max_size: int | None = None,
                  signatures: Sequence[str] | None = None) -> dict[str, Any]:
  """The cost of training `points` bucketed as their configs say, against each run alone.

  Returns programs (distinct compiled programs: bucket and population size), populations,
  the FLOPs and parameter bytes of all members padded over unpadded (`flop_waste`,
  `byte_waste`; 1.0 = no waste), and each population's padded bytes per step
  (`population_bytes`).
  """
  points = list(points)
  max_size = points[0].grid.max_population if max_size is None else max_size
  groups = group_points(points, max_size, bucketed=True, signatures=signatures)
  totals = collections.Counter()
  programs = set()
  population_bytes = []
  for group, program in zip(groups, bucket_programs(points, groups, signatures)):
    members = [points[i] for i in group]
    programs.add((program.to_json(sort_keys=True), len(members)))
    population_bytes.append(0)
    for member in members:
      alone, padded = member_cost(member), member_cost(member, program)
      totals.update(flops=alone[0], padded_flops=padded[0], bytes=alone[1],
                    padded_bytes=padded[1])
      population_bytes[-1] += padded[1]
  return dict(runs=len(points), programs=len(programs), populations=len(groups),
              flop_waste=totals['padded_flops'] / totals['flops'],
              byte_waste=totals['padded_bytes'] / totals['bytes'],
              padded_bytes_per_step=totals['padded_bytes'], bytes_per_step=totals['bytes'],
              population_bytes=population_bytes)
