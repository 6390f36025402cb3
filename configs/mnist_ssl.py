"""Semi-supervised permutation-invariant MNIST: Ladder Network and EBGAN-LN (Sec. 4.2, App. D).

Variants (`--config=configs/mnist_ssl.py:VARIANT[,num_labelled=N][,runlocal]`):
  ladder    Table 2 row 3: the bottom-layer-cost Ladder Network alone (App. D, "Baseline
            model"), trained on classification + lambda_L2 * reconstruction.
  ebgan_ln  Table 2 row 4: the same Ladder Network as EBGAN's discriminator, its per-sample
            bottom-layer reconstruction cost as the energy (App. D, "EBGAN-LN model").
  control   Not in the paper: the Ladder (its schedule) at EBGAN-LN's discriminator learning
            rate 0.0005 instead of App. D's 0.0002, i.e. EBGAN-LN without the hinge on
            generated samples, so that EBGAN-LN - control isolates the contrastive samples
            (experiments/README_semi_supervised.md: at 400 CPU steps the whole gain of EBGAN-LN
            over the Ladder came from the learning rate).
Options: num_labelled in {100, 200, 1000} (Table 2's columns); runlocal: a short CPU run on the
embedded 8,000/2,000-digit MNIST subset; total_steps=N: App. D's schedule scaled to N steps
(`scale_schedule`: the margin reaches 0 and G stops at N/3 for EBGAN-LN, the learning rates
decay linearly to 0 from 2N/3, as in the paper's 60k/180k and 120k/180k, 80k/120k).
Table 2 averages 15 seeds: vary --config.seed and --config.ssl.labelled_seed together over
range(NUM_SEEDS) (experiments/semi_supervised.py --seeds=15 does).

Examples:
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ebgan_ln,runlocal \
      --workdir=/tmp/ln
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ebgan_ln,num_labelled=1000 \
      --workdir=/tmp/ebgan_ln_1000
  python -m experiments.semi_supervised --config=configs/mnist_ssl.py:ladder --seeds=15 \
      --num_labelled=100,200,1000 --workdir=/tmp/table2_ladder
"""

from __future__ import annotations

import ml_collections

from configs import common

VARIANTS = ('ladder', 'ebgan_ln', 'control')
NUM_LABELLED = (100, 200, 1000)  # Sec. 4.2 / Table 2.
NUM_SEEDS = 15                   # Table 2: "averaged over 15 different random seeds".


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Ladder (App. D baseline) or EBGAN-LN (App. D) on PI-MNIST with `num_labelled` labels."""
  arg = common.parse_arg(arg, variant='ebgan_ln', num_labelled=100, runlocal=False,
                         total_steps=0)
  if arg.variant not in VARIANTS:
    raise ValueError(f'Unknown variant {arg.variant!r}: use one of {VARIANTS}.')
  if arg.num_labelled not in NUM_LABELLED and not arg.runlocal:
    raise ValueError(f'num_labelled={arg.num_labelled}: Table 2 uses {NUM_LABELLED}.')
  ebgan_ln = arg.variant == 'ebgan_ln'

  config = common.base_config()
  config.variant = arg.variant
  config.experiment = 'semi_supervised'  # Trained by experiments/semi_supervised.py.
  config.dataset = 'mnist'
  config.image_size = 28  # App. D: the 28x28 (unpadded) MNIST in the EBGAN-LN experiment.
  # Rasmus et al.'s code asserts MNIST pixels in [0, 1]; noise_std and lambda_L2 below are
  # tuned on that scale, so the SSL step is to feed the Ladder Network (x + 1) / 2 of the
  # project's [-1, 1] images and of G's tanh output. Choice; the paper is silent. On this scale
  # the real energy falls to about 8 within a few hundred steps (CPU check on mnist_10k), below
  # App. D's m = 16, the balance App. E asks for; on [-1, 1] it would be 4 times larger.
  config.pixel_range = (0.0, 1.0)
  config.batch_size = 100  # App. D: "The minibatch size was set to 100."

  config.ssl = ml_collections.ConfigDict()
  config.ssl.num_labelled = arg.num_labelled  # Sec. 4.2: 100, 200 or 1000 labels.
  # Which balanced labelled subset (`ssl_data.balanced_labelled_subset`); Table 2 averages 15.
  config.ssl.labelled_seed = 0
  # Labelled minibatch size. The paper gives one minibatch size; Rasmus et al.'s code
  # (run.py, make_datastream) draws labelled and unlabelled minibatches of the same size,
  # cycling the labelled set, and uses every training image as an unlabelled one.
  config.ssl.labelled_batch_size = 100
  # EBGAN-LN only: whether generated samples go through the corrupted path (noise, as the
  # unlabelled real images do to get their energy) or the clean one. Choice: corrupted, so
  # real and generated energies are the same function (Eq. 1 compares them); paper silent.
  config.ssl.fake_through_corrupted = True
  # EBGAN-LN only: whether D's passes over generated samples update the clean path's BN
  # running statistics (the test-time classifier's). Choice: no, the test classifier normalizes
  # with real-image statistics only; the paper is silent. (The batch statistics used in the
  # training pass are the fake batch's own either way, as Rasmus et al. normalize each part of
  # a minibatch separately.)
  config.ssl.fake_updates_batch_stats = False
  # Whether the labelled examples are also in the unlabelled set. Rasmus et al.'s code uses
  # every training image as an unlabelled one (see ebgan_jax/data/ssl.py); the paper is silent.
  config.ssl.unlabelled_includes_labelled = True
  config.ssl.eval_batch_size = 1000  # Test-set batches for the error rate (clean path).
  # Devices the batches are split over; 0 = all. App. D's batch of 100 does not split over 8
  # devices: use 4 (or 1 and one seed per device) there.
  config.ssl.num_devices = 0

  model = config.model
  # App. D: 784-1000-500-250-250-250, then the 10-way softmax layer (Rasmus et al., Sec. 4).
  model.ladder_widths = (1000, 500, 250, 250, 250, 10)
  model.noise_std = 0.3  # Rasmus et al. (2015), Sec. 4: Gaussian corruption noise std 0.3.
  # G (EBGAN-LN only). The paper does not describe EBGAN-LN's generator; we take the
  # fully-connected kind of Sec. 4.1 with the best EBGAN grid setting of Fig. 4(b) (App. C):
  # nLayerG = 5, sizeG = 800, latent 100. Its output is 28x28 (image_size above).
  model.family = 'mlp'
  model.n_layer_g, model.size_g = 5, 800

  loss = config.loss
  loss.kind = 'ebgan' if ebgan_ln else 'none'
  loss.class_weight = 1.0  # App. D: "fixing the weight on the classification cost to 1".
  # App. D: lambda_L2 = 1000/784, best of {5000, 2000, 1000, 500}/784; it multiplies the
  # per-sample squared error summed over the 784 pixels (losses.squared_l2_energy).
  loss.recon_weight = 1000.0 / 784.0
  # App. D: m starts at 16 and decays linearly to 0 within the first 60,000 steps.
  loss.margin = 16.0 if ebgan_ln else 0.0
  loss.margin_decay_steps = 60_000 if ebgan_ln else 0
  # Weight of the hinge [m - D(G(z))]^+ on generated samples in D's loss. Choice: the same
  # lambda_L2 as the real energy, so D's loss is class_weight * CE + lambda_L2 * Eq. (1), i.e.
  # Eq. (1) with D's energy taken as the Ladder's weighted unsupervised cost, which falls back
  # to the plain Ladder cost when m = 0 (Sec. 4.2). The paper is silent.
  loss.hinge_weight = loss.recon_weight if ebgan_ln else 0.0
  loss.pt_weight = 0.0  # No pulling-away term in App. D.

  optim = config.optim
  optim.optim_d = optim.optim_g = 'adam'  # App. D: Adam with beta1 = 0.5.
  optim.b1 = 0.5
  if ebgan_ln:
    optim.lr_d, optim.lr_g = 0.0005, 0.00025  # App. D: initial lrs 0.0005 (D), 0.00025 (G).
    config.total_steps = 180_000      # App. D: 60,000 steps, then D alone for 120,000 more.
    config.generator_off_step = 60_000  # App. D: G's training stops once m reaches 0.
    optim.lr_decay_start = 120_000    # App. D: linear decay to 0 from step 120,000 (2/3).
  else:
    optim.lr_d = optim.lr_g = 0.0002  # App. D: best lr of {0.002, ..., 0.0001}.
    if arg.variant == 'control':
      optim.lr_d = 0.0005             # EBGAN-LN's D learning rate (App. D), on the Ladder.
    config.total_steps = 120_000      # App. D: 120,000 steps.
    config.generator_off_step = 0     # No generator.
    optim.lr_decay_start = 80_000     # App. D: linear decay to 0 from step 80,000 (2/3).

  # Speed only (the same steps): ten steps per jitted call, one lax.scan over batches drawn
  # on the host (ebgan_jax.ssl_train), so a call's host work is paid once per ten steps.
  config.steps_per_call = 10
  config.log_every_steps = 500
  config.checkpoint_every_steps = 10_000
  config.sample_every_steps = 5_000

  if arg.runlocal:
    # CPU smoke run on the embedded 8,000 train / 2,000 test digits; the schedule keeps
    # App. D's proportions (m reaches 0 and G stops at 1/3, lr decay from 2/3 of the run).
    config.dataset = 'mnist_10k'
    scale_schedule(config, 300)
    config.log_every_steps = 20
    config.checkpoint_every_steps = config.sample_every_steps = 100
  if arg.total_steps > 0:
    scale_schedule(config, arg.total_steps)
  return config


def scale_schedule(config: ml_collections.ConfigDict, total_steps: int) -> None:
  """Sets App. D's schedule for a run of `total_steps`, keeping the paper's proportions.

  EBGAN-LN: m decays to 0 and G stops at total/3 (60,000 of 180,000), the learning rates decay
  linearly to 0 from 2 total/3 (120,000). Ladder: the decay starts at 2 total/3 (80,000 of
  120,000). Logging, checkpoint and sample intervals shrink with short runs.
  """
  ebgan_ln = config.variant == 'ebgan_ln'
  config.total_steps = total_steps
  third = max(total_steps // 3, 1)
  config.loss.margin_decay_steps = third if ebgan_ln else 0
  config.generator_off_step = third if ebgan_ln else 0
  config.optim.lr_decay_start = max(2 * total_steps // 3, 1)
  for field in ('log_every_steps', 'checkpoint_every_steps', 'sample_every_steps'):
    config[field] = max(min(config[field], total_steps // 10), 1)

