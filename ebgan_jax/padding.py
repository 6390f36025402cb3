"""Padded populations: fully-connected runs of other widths, dropout or optimizers in one program.

Runs of Table 1 that differ only in sizeG, sizeD, dropoutD, optimD/optimG or lr can train as
one population (`ebgan_jax.population`, `padded=True`): every member is zero-padded to the
widest member (`program_config`), and each member keeps its own hyper-parameters.

Why a padded member is its unpadded run (up to float reassociation). Take a hidden layer of
width w padded to W > w: the kernel columns of the padded units, their bias, BatchNorm scale
and shift, and the next layer's kernel rows that read them are all zero.
- Forward: a padded unit's pre-activation is 0 for every sample; BatchNorm maps a constant 0
  to (0 - 0) / sqrt(0 + eps) * 0 + 0 = 0; ReLU(0) = 0; dropout keeps 0 (0 / keep or 0); the
  next layer adds 0 * 0 to each real unit. So the real units compute what they compute alone,
  with zero terms added to their sums: equal up to the order XLA sums in. The encoder code S
  of the pulling-away term gains zero coordinates, which change neither its norms nor its
  dot products (Eq. 14). BatchNorm statistics are per unit, so a real unit's are its own.
- Backward: a padded unit's output gradient is its outgoing (zero) kernel rows times the
  upstream gradient, 0 (and ReLU's derivative at 0 is 0 in JAX besides); BatchNorm passes
  0 back; so the gradients of the padded kernel columns and rows, biases, scales and shifts
  are all exactly 0.
- Updates: SGD moves a zero-gradient weight by -lr * 0 = 0; Adam's moments stay 0 and its
  update is 0 / (sqrt(0) + eps) = 0; the EMA of a zero is zero. Padded weights stay zero.
- Dropout: `ebgan_jax.models.mlp` draws its masks feature-major (unit by unit), so a padded
  layer's masks for the real units are the masks the unpadded layer draws (with JAX's
  partitionable threefry, the default, random bits depend only on an element's row-major
  index): dropout is exact too.
- Mixed members: in a program with dropout, each member has its own switch (`dropout_on`, a
  per-member hyper-parameter), and one without dropout keeps its undropped activations; a
  member's optimizer in a program mixing Adam and SGD is `step.adam_or_sgd`, equal to
  `optax.adam` or `optax.sgd` for it (Adam's moments are kept, unused, for SGD members).
What padding does change: the cost. A member pays for the padded widths (FLOPs and memory
traffic), and an SGD member in a mixed program pays for Adam's moments; buckets of
similar widths bound that waste (`ebgan_jax.grid.buckets`, BENCHMARKS.md).

Initialisation: each member is initialised as its unpadded run is (its own config, its own
init key, its own shapes) and then embedded in the padded arrays (`pad_tree`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

# Config fields a padded population may vary across its members, beyond
# `population.MEMBER_FIELDS`.
PADDED_FIELDS = ('model.size_g', 'model.size_d', 'model.dropout_d', 'optim.optim_d',
                 'optim.optim_g')
# The optimizer name of a player whose members mix Adam and SGD (`step.make_optimizer`).
MIXED_OPTIMIZER = 'adam_or_sgd'


def program_config(configs: Sequence[ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """The config a padded population's program is built from.

  The first member's config with the widest sizeG and sizeD of the members, dropout in D if
  any member has it, and for each player its members' optimizer, or `MIXED_OPTIMIZER` where
  they mix Adam and SGD.
  """
  configs = list(configs)
  if configs[0].model.family != 'mlp':
    raise ValueError("Padded populations need config.model.family == 'mlp' (the widths of "
                     f'Table 1), got {configs[0].model.family!r}; turn config.grid.bucketing '
                     'off.')
  program = ml_collections.ConfigDict(configs[0].to_dict())
  program.model.size_g = max(c.model.size_g for c in configs)
  program.model.size_d = max(c.model.size_d for c in configs)
  program.model.dropout_d = any(c.model.dropout_d for c in configs)
  for name in ('optim_d', 'optim_g'):
    kinds = {c.optim[name] for c in configs}
    program.optim[name] = kinds.pop() if len(kinds) == 1 else MIXED_OPTIMIZER
  return program


def check_fits(config: ml_collections.ConfigDict, program: ml_collections.ConfigDict) -> None:
  """Raises unless `config` can be a member of `program` (its widths, dropout, optimizers)."""
  m, p = config.model, program.model
  fits = (m.size_g <= p.size_g and m.size_d <= p.size_d and (p.dropout_d or not m.dropout_d)
          and all(program.optim[o] in (config.optim[o], MIXED_OPTIMIZER)
                  for o in ('optim_d', 'optim_g')))
  if not fits:
    raise ValueError(f'A member (sizeG {m.size_g}, sizeD {m.size_d}, dropout {m.dropout_d}, '
                     f'{config.optim.optim_d}/{config.optim.optim_g}) does not fit the padded '
                     f'program (sizeG {p.size_g}, sizeD {p.size_d}, dropout {p.dropout_d}, '
                     f'{program.optim.optim_d}/{program.optim.optim_g}).')


def member_init_config(config: ml_collections.ConfigDict,
                       program: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A member's own config with the program's optimizers: its unpadded shapes, the program's
  optimizer-state structure (the params it initialises do not depend on the optimizer)."""
  member = ml_collections.ConfigDict(config.to_dict())
  member.optim.optim_d, member.optim.optim_g = program.optim.optim_d, program.optim.optim_g
  return member


def pad_tree(tree: Any, like: Any) -> Any:
  """Zero-pads every leaf of `tree` at the end of each axis to the shape of `like`'s leaf."""
  def pad(leaf, target):
    widths = [(0, t - s) for s, t in zip(leaf.shape, target.shape)]
    if len(leaf.shape) != len(target.shape) or any(w < 0 for _, w in widths):
      raise ValueError(f'Cannot pad a leaf of shape {leaf.shape} to {target.shape}.')
    return jnp.pad(leaf, widths) if any(w for _, w in widths) else leaf
  return jax.tree.map(pad, tree, like)


def unpad_tree(tree: Any, like: Any) -> Any:
  """The leading corner of every leaf of `tree` with the shape of `like`'s leaf (`pad_tree`'s
  inverse)."""
  return jax.tree.map(lambda leaf, target: leaf[tuple(slice(0, s) for s in target.shape)],
                      tree, like)
