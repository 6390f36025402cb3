"""The MNIST grid search of Sec. 4.1 (Table 1) and the margin sweep of Figure 9 (App. E).

Variants (`--config=configs/mnist_grid.py:VARIANT[,seeds=N][,slice=N]`):
  ebgan         Table 1, EBGAN column: nLayerG x nLayerD x sizeG x sizeD x dropoutD = 512 runs,
                Adam for both players, lr 0.001, margin 10 (Sec. 4.1 restrictions (i)-(iii)).
  ebgan_pt      the same 512 architectures with lambda_PT = 0.1 (App. C, Fig. 4(c)).
  gan           Table 1, GAN column: the 512 architectures x optimD x optimG in {adam, sgd}
                x lr in {0.01, 0.001, 0.0001} = 6,144 runs.
  gan_slice     a stratified 512-run slice of the GAN grid: each architecture once, under one
                of the 12 optimizer/lr settings, drawn at random with a fixed seed and
                balanced over the 12 (each 42 or 43 times); for Figure 2 within one GPU budget.
  margin_sweep  Figure 9: m in {1, 2, 4, 6, 8, 12, 16, 32}, nLayerG=5, nLayerD=2, sizeG=1600,
                sizeD=1024, no dropout, Adam, lr 0.001 (8 runs, one population).
  smoke         a few tiny runs of a few steps (EBGAN, EBGAN-PT and GAN), for the tests.

`get_config(arg)` returns the base config of a variant; `sweep(config)` expands it into one
config per grid point. Every point carries its own `seed`: `config.seed + arch_index *
seeds + replicate`, where `arch_index` numbers the 512 architectures (nLayerG, nLayerD, sizeG,
sizeD, dropoutD) in Table 1's order. The same architecture thus starts from the same seed in
the EBGAN, EBGAN-PT and GAN grids and under every GAN optimizer setting (paired comparisons);
`seeds=N` adds N - 1 replicates per point, which also lets the EBGAN grid train populations
of N members (its 512 points all have different shapes).

Slices. `slice=N` keeps N points of the variant's sweep, drawn uniformly without replacement
with `config.grid.sample_seed` (e.g. `:ebgan,slice=20` for a CPU). A slice's points, like
`gan_slice`'s, are points of the full grid with the same run ids, so a later full grid in
the same workdir skips them (finished runs are never rerun); they are written to their own
table (`results/<variant>-slice<N>-shard...`) and their rows say `slice`. The draws rank
points by a SHA-256 hash of (seed, index in the sweep): the same on every machine and numpy
version, and nested (slice=20 is inside slice=40).

Training budget. The paper does not state one. Every run gets `total_steps` = 2,000 steps at
batch 64 (about 2 epochs of MNIST's 60,000 digits, 16 of the embedded 8,000): enough for the
fully-connected models to draw digits, and small enough that the 512-run EBGAN grid is a
GPU-hours job. Change it with --config.total_steps=N; the budget is stored in every result row.
It is short for the GANs under SGD: with App. C's D initialisation, N(0, 0.002), Figure 4
(a)'s GAN scores I' 0.11 at 2,000 steps, 3.24 at 4,000 and 4.37 at 8,000 (RESULTS.md), so a
GAN side compared at 2,000 steps is cut off before it starts; use >= 4,000 for a fair one.

Scoring (`config.eval`): I', IS, classifier FID against the test split and the class
histogram over `num_samples` generated digits, with the offline classifier of App. C trained
once per dataset (`classifier_epochs` epochs over the whole train split) and cached.
"""

from __future__ import annotations

import hashlib
import itertools

import ml_collections

from configs import common

VARIANTS = ('ebgan', 'ebgan_pt', 'gan', 'gan_slice', 'margin_sweep', 'smoke')

# Table 1: the architecture axes, shared by EBGANs and GANs.
N_LAYER_G = (2, 3, 4, 5)
N_LAYER_D = (2, 3, 4, 5)
SIZE_G = (400, 800, 1600, 3200)
SIZE_D = (128, 256, 512, 1024)
DROPOUT_D = (True, False)
# Table 1: the GAN-only optimization axes.
GAN_OPTIM = ('adam', 'sgd')
GAN_LR = (0.01, 0.001, 0.0001)
# Figure 9 (App. E): the margins of the sweep, top to bottom.
FIG9_MARGINS = (1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Base config of the grid variant named in `arg` (see the module docstring)."""
  arg = common.parse_arg(arg, variant='ebgan', seeds=1, slice=0)
  if arg.variant not in VARIANTS:
    raise ValueError(f'Unknown variant {arg.variant!r}; use one of {VARIANTS}.')
  config = common.base_config()
  config.image_size = 32  # App. E: the grid search uses MNIST zero-padded to 32x32.
  config.batch_size = 64
  config.total_steps = 2000  # Our budget; the paper gives none (see the module docstring).
  config.log_every_steps = 100

  model = config.model
  model.dropout_d = False
  config.optim.optim_d = config.optim.optim_g = 'adam'  # Sec. 4.1 (i): Adam for EBGANs.
  config.optim.lr_d = config.optim.lr_g = 0.001         # Sec. 4.1 (i): lr 0.001.
  config.loss.margin = 10.0                             # Sec. 4.1 (iii): m = 10, not tuned.
  config.loss.pt_weight = 0.0
  config.loss.kind = 'gan' if arg.variant in ('gan', 'gan_slice') else 'ebgan'
  if arg.variant == 'ebgan_pt':
    config.loss.pt_weight = 0.1  # App. C, Fig. 4(c): lambda_PT = 0.1.
  if arg.variant == 'margin_sweep':
    # App. E, Figure 9's fixed setting.
    model.n_layer_g, model.n_layer_d, model.size_g, model.size_d = 5, 2, 1600, 1024

  config.grid = ml_collections.ConfigDict()
  config.grid.variant = arg.variant
  config.grid.seeds = arg.seeds         # Replicates per grid point.
  config.grid.slice = arg.slice         # > 0: N points of the sweep drawn uniformly (slices).
  config.grid.sample_seed = 0           # The draws of `slice` and of gan_slice's settings.
  config.grid.max_population = 16       # Members per population program (bounds memory).
  config.grid.data_seed = 0             # Order of the batches every population shares.
  config.grid.num_sample_images = 64    # Kept per run (samples/<run_id>.npz) for Figure 4.
  # Speed only (no effect on results): steps per jitted call (one lax.scan; the budget need
  # not be a multiple), threads compiling upcoming populations while one trains (-1:
  # min(8, CPU cores / 2) on a GPU/TPU, none on a CPU; 0: none), and the shared batches kept
  # on the devices for the whole grid (total_steps x batch x 32 x 32 x 4 bytes: 0.5 GB at the
  # default budget).
  config.grid.steps_per_call = 100
  config.grid.compile_workers = -1
  config.grid.cache_batches = True
  # Speed only too: how a population program advances its members: 'auto' is 'unroll' on a CPU (each member's
  # own step; XLA:CPU's batched matmuls are slow) and 'vmap' on a GPU/TPU (ebgan_jax.population).
  config.grid.population_strategy = 'auto'
  # Speed only too (rows, run ids and scores do not depend on it; ebgan_jax.grid.buckets):
  # runs that differ only in widths, dropout, optimizers and lr train as one padded
  # population program, each width padded to the smallest of bucket_size_g/_d that holds it
  # ('auto': on a GPU/TPU, off on a CPU, where the padding waste costs training time).
  # Chosen from the padding-waste table of BENCHMARKS.md (experiments/bucket_waste.py): the
  # 512-run grids are bound by compile work (32 programs), the 6,144-run GAN grid by its
  # training (less padding, one program per optimizer pair, 24-member populations).
  config.grid.bucketing = 'auto'
  config.grid.bucket_size_g = (1600, 3200)
  config.grid.bucket_size_d = (1024,)
  config.grid.bucket_optimizers = True  # Adam and SGD members in one program.
  if arg.variant == 'gan':
    config.grid.bucket_size_g = SIZE_G
    config.grid.bucket_optimizers = False
    config.grid.max_population = 24

  # Each run is scored once, at the end of its budget (config.eval, common.py's defaults).
  config.eval.num_samples = 10000       # Generated digits per score (the paper does not say).

  if arg.variant == 'smoke':
    config.batch_size = 16
    config.total_steps = 3
    config.log_every_steps = 1
    model.n_layer_g, model.n_layer_d, model.size_g, model.size_d = 2, 2, 16, 8
    model.latent_dim = 8
    config.grid.num_sample_images = 16
    config.eval.num_samples = 64
    config.eval.batch_size = 64
    config.eval.classifier_epochs = 1
    config.eval.classifier_batch_size = 64
    config.eval.classifier_train_examples = 512
  return config


def _architectures(config: ml_collections.ConfigDict):
  """(arch_index, n_layer_g, n_layer_d, size_g, size_d, dropout_d) in Table 1's order."""
  variant = config.grid.variant
  if variant == 'margin_sweep':
    m = config.model
    return [(0, m.n_layer_g, m.n_layer_d, m.size_g, m.size_d, m.dropout_d)]
  if variant == 'smoke':
    m = config.model
    return [(i, m.n_layer_g, n_layer_d, m.size_g, m.size_d, False)
            for i, n_layer_d in enumerate((2, 3))]
  axes = itertools.product(N_LAYER_G, N_LAYER_D, SIZE_G, SIZE_D, DROPOUT_D)
  return [(i, *arch) for i, arch in enumerate(axes)]


def _point(config: ml_collections.ConfigDict, arch, seed_offset: int, *, kind: str,
           optim_d: str, optim_g: str, lr: float, margin: float, pt_weight: float
           ) -> ml_collections.ConfigDict:
  point = ml_collections.ConfigDict(config.to_dict())
  arch_index, n_layer_g, n_layer_d, size_g, size_d, dropout_d = arch
  point.model.n_layer_g, point.model.n_layer_d = n_layer_g, n_layer_d
  point.model.size_g, point.model.size_d, point.model.dropout_d = size_g, size_d, dropout_d
  point.loss.kind, point.loss.margin, point.loss.pt_weight = kind, margin, pt_weight
  point.optim.optim_d, point.optim.optim_g = optim_d, optim_g
  point.optim.lr_d = point.optim.lr_g = lr  # Table 1 has one lr for both players.
  point.seed = config.seed + arch_index * config.grid.seeds + seed_offset
  return point


def _rank(seed: int, index: int) -> str:
  """A point's place in a seeded random order (module docstring: Slices)."""
  return hashlib.sha256(f'{seed}:{index}'.encode()).hexdigest()


def gan_slice_settings(config: ml_collections.ConfigDict) -> dict[int, tuple[str, str, float]]:
  """gan_slice's (optimD, optimG, lr) of each architecture index: the architectures in a seeded
  random order take the 12 settings in turn, so each setting goes to 42 or 43 of the 512."""
  settings = list(itertools.product(GAN_OPTIM, GAN_OPTIM, GAN_LR))
  archs = sorted((arch[0] for arch in _architectures(config)),
                 key=lambda i: _rank(config.grid.sample_seed, i))
  return {arch: settings[k % len(settings)] for k, arch in enumerate(archs)}


def sweep(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """One config per grid point of `config.grid.variant` (times `config.grid.seeds`).

  Sizes: ebgan 512, ebgan_pt 512, gan 6,144, gan_slice 512, margin_sweep 8, smoke 6 (times
  seeds), or `config.grid.slice` of them.
  """
  variant = config.grid.variant
  chosen = gan_slice_settings(config) if variant == 'gan_slice' else {}
  specs = []  # (arch, replicate, the point's knobs): cheap to make, sliced before the configs.
  for arch in _architectures(config):
    for rep in range(config.grid.seeds):
      def add(**kw):
        specs.append((arch, rep, kw))  # pylint: disable=cell-var-from-loop
      if variant in ('ebgan', 'ebgan_pt'):
        add(kind='ebgan', optim_d='adam', optim_g='adam', lr=0.001, margin=10.0,
            pt_weight=config.loss.pt_weight)
      elif variant in ('gan', 'gan_slice'):
        settings = ([chosen[arch[0]]] if chosen else
                    itertools.product(GAN_OPTIM, GAN_OPTIM, GAN_LR))
        for optim_d, optim_g, lr in settings:
          add(kind='gan', optim_d=optim_d, optim_g=optim_g, lr=lr, margin=10.0, pt_weight=0.0)
      elif variant == 'margin_sweep':
        for margin in FIG9_MARGINS:
          add(kind='ebgan', optim_d='adam', optim_g='adam', lr=0.001, margin=margin,
              pt_weight=0.0)
      elif variant == 'smoke':
        for pt_weight in (0.0, 0.1):
          add(kind='ebgan', optim_d='adam', optim_g='adam', lr=0.001, margin=10.0,
              pt_weight=pt_weight)
        if arch[0] == 0:
          for lr in (0.01, 0.001):
            add(kind='gan', optim_d='adam', optim_g='adam', lr=lr, margin=10.0, pt_weight=0.0)
  size = config.grid.get('slice', 0)
  if size:
    if size > len(specs):
      raise ValueError(f'slice={size} is more than the {len(specs)} points of {variant}.')
    keep = sorted(sorted(range(len(specs)), key=lambda i: _rank(config.grid.sample_seed, i))
                  [:size])
    specs = [specs[i] for i in keep]  # In the sweep's order.
  return [_point(config, arch, rep, **kw) for arch, rep, kw in specs]


def metrics() -> list[str]:
  """The columns of the results table the figures compare (higher I' is better)."""
  return ['i_prime', 'inception_score', 'fid', 'modes_covered']
