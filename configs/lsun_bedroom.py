"""EBGAN on LSUN bedrooms at 64x64 (Sec. 4.3, Figure 5; App. F, Figures 11-13).

Data: tfds `lsun/bedroom` (3M images, ~256 pixels on the shorter side). Whole images: the
shorter side is resized to 64 and the central 64x64 square taken. `patches` (App. F, the
"augmented-patch version"): the shorter side is resized to 96, the central 96x96 square kept,
and every epoch takes a random 64x64 crop of it (deterministic given seed and epoch).
Models: family 'dcgan64'. Margin m = 80 (Sec. 4.3); Adam lr 0.0002, beta1 0.5, batch 64
(Radford et al., 2015, which App. C follows).

Variants (`--config=configs/lsun_bedroom.py:ARG`, ARG = variant[,patches][,tiny]):
  ebgan     EBGAN, m = 80.
  ebgan_pt  EBGAN-PT: lambda_PT = 0.1.
  dcgan     the DCGAN baseline (binary D, GAN loss).
  patches   flag: App. F's 64x64 random patches of 96x96 images.
  tiny      flag: tiny widths, batch 4, 3 steps (tests, smoke runs).

Examples:
  python -m ebgan_jax.main --config=configs/lsun_bedroom.py:ebgan --workdir=/tmp/lsun_ebgan
  python -m ebgan_jax.main --config=configs/lsun_bedroom.py:dcgan --workdir=/tmp/lsun_dcgan
  python -m ebgan_jax.main --config=configs/lsun_bedroom.py:ebgan_pt,patches \
      --workdir=/tmp/lsun_patches_ebgan_pt
"""

from configs import common

VARIANTS = ('ebgan', 'ebgan_pt', 'dcgan', 'ebgan,patches', 'ebgan_pt,patches', 'dcgan,patches',
            'ebgan,tiny', 'ebgan_pt,patches,tiny', 'dcgan,tiny')

MARGIN = 80.0       # Sec. 4.3: m = 80 for LSUN.
PATCH_SOURCE = 96   # App. F: "patches ... of size 64x64 and cropped from 96x96 original images".


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant='ebgan_pt', patches=False, tiny=False)
  config = common.conv_config(arg, dataset='lsun/bedroom', family='dcgan64', image_size=64,
                              margin=MARGIN, tiny_width_mult=1 / 32)
  if arg.patches:
    config.resize_size = PATCH_SOURCE
    config.random_crop = True
  config.num_epochs = 5  # Not in the paper; ~47k steps per epoch at batch 64.
  return config
