"""Fully-connected MNIST models of Figure 4 (Sec. 4.1, App. C).

Variants (`--config=configs/mnist_fc.py:VARIANT`):
  gan       Fig. 4(a), best GAN: nLayerG=5, nLayerD=2, sizeG=1600, sizeD=1024, SGD, lr 0.01.
  ebgan     Fig. 4(b), best EBGAN: nLayerG=5, nLayerD=2, sizeG=800, sizeD=1024, Adam,
            lr 0.001, margin 10.
  ebgan_pt  Fig. 4(c): ebgan with lambda_PT = 0.1.

Examples:
  python -m ebgan_jax.main --config=configs/mnist_fc.py:ebgan_pt --workdir=/tmp/demo  # embedded digits
  python -m ebgan_jax.main --config=configs/mnist_fc.py:ebgan_pt --config.dataset=mnist \
      --workdir=/tmp/ebgan_pt_mnist
"""

from configs import common

VARIANTS = ('gan', 'ebgan', 'ebgan_pt')  # Every `get_config(arg)` a test should build.


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant='ebgan_pt')
  config = common.base_config()
  model = config.model
  if arg.variant == 'gan':
    config.loss.kind = 'gan'
    model.n_layer_g, model.n_layer_d, model.size_g, model.size_d = 5, 2, 1600, 1024  # App. C 4(a)
    model.dropout_d = False
    config.optim.optim_d = config.optim.optim_g = 'sgd'
    config.optim.lr_d = config.optim.lr_g = 0.01
  elif arg.variant in ('ebgan', 'ebgan_pt'):
    config.loss.kind = 'ebgan'
    model.n_layer_g, model.n_layer_d, model.size_g, model.size_d = 5, 2, 800, 1024  # App. C 4(b)
    model.dropout_d = False
    config.optim.optim_d = config.optim.optim_g = 'adam'
    config.optim.lr_d = config.optim.lr_g = 0.001
    config.loss.margin = 10.0
    config.loss.pt_weight = 0.1 if arg.variant == 'ebgan_pt' else 0.0  # App. C 4(c)
  else:
    raise ValueError(f"Unknown variant {arg.variant!r}: use 'gan', 'ebgan' or 'ebgan_pt'.")
  # A step of these small models takes ~25 ms on 2 CPU cores and ~0.6 ms on a GPU, where the
  # host work around a call would dominate: 10 steps per jitted call (speed only).
  config.steps_per_call = 10
  # Scores every 1,000 steps (and at the end) from 1,000 generated digits against the 2,000
  # of the embedded test split: ~1 s a score on the 2-core CPU, where 2,000 samples take ~6
  # (an eigendecomposition of their size; BENCHMARKS.md). The checkpoint with the best
  # classifier FID is kept.
  config.eval_every_steps = 1000
  config.eval.num_samples = 1000
  config.eval.best_metric = 'eval/classifier_fid'
  return config
