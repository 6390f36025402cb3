"""Population training: many runs of one architecture in one jitted program.

Runs whose parameter shapes match (same models and optimizer kinds) but whose seed, learning
rates, margin or lambda_PT differ are stacked along a leading member axis and trained by one
program: each member keeps its own params, optimizer state, RNG stream and hyper-parameters,
and all members share the input batches. One small fully-connected run cannot fill an
accelerator; a population of them can. Each member's arithmetic is the one it would do alone
(tests check a member against its single run).

How the program advances the members is the `strategy`, chosen per backend like the
convolution lowerings of `ebgan_jax.models.conv_transpose` (BENCHMARKS.md has the numbers):
- 'vmap': `jax.vmap(train_step)`, batched matmuls over the member axis. What fills a GPU or TPU.
- 'unroll': each member's own `train_step`, written out one after another in the program over
  a tuple of per-member states. XLA:CPU's batched matmuls are slow: on the 2-core CPU a
  vmapped population of one runs at about half a single run's speed, an unrolled one at a
  single run's. The stacked state is split into the per-member tuple once per scanned call
  (`to_carry` / `from_carry`), not every step: a fixed cost per call, so 16 members of
  Fig. 4(c) ran 1.08x a single run per image at the grid's 100 steps a call and 0.84-0.94x
  at 10.
- 'map': `lax.map` over the members, one after the other; kept for comparison.
- 'auto': 'unroll' on CPU, 'vmap' elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ebgan_jax import sharding, step

# How a population program advances its members (module docstring).
STRATEGIES = ('auto', 'vmap', 'unroll', 'map')

# Config fields a population may vary across its members (all others must agree).
MEMBER_FIELDS = ('seed', 'optim.lr_d', 'optim.lr_g', 'loss.margin', 'loss.pt_weight')


def _get(config: ml_collections.ConfigDict, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def shared_signature(config: ml_collections.ConfigDict,
                     fields: Sequence[str] = MEMBER_FIELDS) -> str:
  """The config with the member fields blanked: runs with equal signatures can share a program."""
  blanked = ml_collections.ConfigDict(config.to_dict())
  for dotted in fields:
    *parents, leaf = dotted.split('.')
    node = blanked
    for p in parents:
      node = node[p]
    node[leaf] = None
  return blanked.to_json(sort_keys=True)


def group_configs(configs: Sequence[ml_collections.ConfigDict], max_size: int = 0
                  ) -> list[list[int]]:
  """Indices of `configs` grouped into populations of equal signature (at most `max_size`)."""
  groups: dict[str, list[int]] = {}
  for i, config in enumerate(configs):
    groups.setdefault(shared_signature(config), []).append(i)
  out = []
  for members in groups.values():
    size = max_size or len(members)
    out.extend(members[i:i + size] for i in range(0, len(members), size))
  return out


@dataclasses.dataclass
class Population:
  """A stacked state of `size` members and the functions that create and advance it."""
  trainer: step.Trainer
  configs: list[ml_collections.ConfigDict]
  train_keys: jax.Array      # [P] typed keys: each member's train stream.
  sample_keys: jax.Array     # [P]
  state: step.TrainState     # Every leaf has a leading [P] axis (shapes only if abstract).
  train_step: Callable       # jitted (state, batch) -> (state, metrics [P]); donates state.
  step_fn: Callable          # The same, not jitted.
  # For callers that scan many steps in one program (ebgan_jax.grid): the form of the state a
  # scan should carry, and one step on it. The stacked state itself under 'vmap' and 'map';
  # a tuple of per-member states under 'unroll', so that no step slices or restacks.
  to_carry: Callable         # state -> carry.
  from_carry: Callable       # carry -> state.
  carry_step: Callable       # (carry, batch) -> (carry, metrics [P]).
  init_fn: Callable          # jitted (*init_args) -> the initial stacked state.
  init_args: tuple           # Member keys and hyper-parameters, [P] each.

  @property
  def size(self) -> int:
    return len(self.configs)


def resolve_strategy(strategy: str) -> str:
  """'auto' -> the strategy for this process's backend; the others are checked and returned."""
  if strategy not in STRATEGIES:
    raise ValueError(f'Unknown population strategy {strategy!r}: one of {STRATEGIES}.')
  if strategy == 'auto':
    return 'unroll' if jax.default_backend() == 'cpu' else 'vmap'
  return strategy


def _member_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array, jax.Array]:
  # The same split as train.train_and_evaluate, so a member replays its single run.
  init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
  return init_key, train_key, sample_key


def create_population(configs: Sequence[ml_collections.ConfigDict], total_steps: int,
                      mesh: jax.sharding.Mesh | None = None,
                      strategy: str = 'auto', abstract: bool = False) -> Population:
  """Stacks the initial states of `configs` (all of one signature) into one population.

  Args:
    configs: the members' configs, equal but for `MEMBER_FIELDS`.
    total_steps: the schedule length (learning-rate decay).
    mesh: the device mesh (default: all devices).
    strategy: how one program advances every member, one of `STRATEGIES` (module docstring).
    abstract: build the functions but leave the state as shapes (`jax.ShapeDtypeStruct`s),
      allocating nothing: to compile a population ahead of training it (`ebgan_jax.grid`),
      then `init_fn(*init_args)` gives the state.
  """
  configs = list(configs)
  strategy = resolve_strategy(strategy)
  signatures = {shared_signature(c) for c in configs}
  if len(signatures) != 1:
    raise ValueError('A population needs configs that differ only in '
                     f'{MEMBER_FIELDS}; group them with group_configs() first.')
  mesh = mesh or sharding.make_mesh()
  trainer = step.Trainer(configs[0], total_steps)
  keys = [_member_keys(c) for c in configs]
  init_keys, train_keys, sample_keys = (jnp.stack(k) for k in zip(*keys))
  lr_d = jnp.array([c.optim.lr_d for c in configs], jnp.float32)
  lr_g = jnp.array([c.optim.lr_g for c in configs], jnp.float32)
  margin = jnp.array([c.loss.margin for c in configs], jnp.float32)
  pt_weight = jnp.array([c.loss.pt_weight for c in configs], jnp.float32)

  def init_member(init_key, lr_d, lr_g, margin, pt_weight):
    state = trainer.create_state(init_key)
    return state.replace(
        g=state.g.replace(opt_state=optax.tree_utils.tree_set(state.g.opt_state,
                                                              learning_rate=lr_g)),
        d=state.d.replace(opt_state=optax.tree_utils.tree_set(state.d.opt_state,
                                                              learning_rate=lr_d)),
        hparams={'margin': margin, 'pt_weight': pt_weight})

  repl = sharding.replicated(mesh)
  init_fn = jax.jit(jax.vmap(init_member), out_shardings=repl)
  init_args = (init_keys, lr_d, lr_g, margin, pt_weight)
  state = jax.eval_shape(init_fn, *init_args) if abstract else init_fn(*init_args)
  batch = sharding.batch_sharding(mesh)

  def member_step(state, images, key):
    return trainer.train_step(state, images, key)

  size = len(configs)

  def stacked(carry):
    return carry

  to_carry = from_carry = stacked
  if strategy == 'vmap':
    vstep = jax.vmap(member_step, in_axes=(0, None, 0))

    def carry_step(state, images):
      return vstep(state, images, train_keys)
  elif strategy == 'map':
    def carry_step(state, images):
      return jax.lax.map(lambda member: member_step(member[0], images, member[1]),
                         (state, train_keys))
  else:  # 'unroll'
    def to_carry(state):
      return tuple(jax.tree.map(lambda leaf, i=i: leaf[i], state) for i in range(size))

    def from_carry(members):
      return jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)

    def carry_step(members, images):
      outs = [member_step(member, images, train_keys[i]) for i, member in enumerate(members)]
      return (tuple(state for state, _ in outs),
              jax.tree.map(lambda *m: jnp.stack(m), *(metrics for _, metrics in outs)))

  def population_step(state, images):
    carry, metrics = carry_step(to_carry(state), images)
    return from_carry(carry), metrics

  jitted = jax.jit(population_step, in_shardings=(repl, batch), out_shardings=(repl, repl),
                   donate_argnums=0)
  return Population(trainer, configs, train_keys, sample_keys, state, jitted, population_step,
                    to_carry, from_carry, carry_step, init_fn, init_args)


def member_state(population: Population, index: int) -> step.TrainState:
  """Member `index`'s state, unstacked (e.g. to save or evaluate it alone)."""
  return jax.tree.map(lambda leaf: leaf[index], population.state)
