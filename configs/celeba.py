"""EBGAN on CelebA at 64x64 (Sec. 4.3, Figure 6; App. C architectures).

Data: tfds `celeb_a` (the aligned 178x218 faces). The central 108x108 square is cut and
resized to 64x64: the crop of the DCGAN-era CelebA pipelines (carpedm20/DCGAN-tensorflow's
`--input_height=108 --crop`), which keeps the face of the aligned images - eyes at a fixed
height - and little background; the paper does not state its crop (`center_crop=140` keeps
hair and background).
Models: family 'dcgan64' (DCGAN-like G, App. C auto-encoder D, DCGAN binary D as baseline).
Margin m = 20 (Sec. 4.3); Adam lr 0.0002, beta1 0.5, batch 64 (Radford et al., 2015, which
App. C follows).

Variants (`--config=configs/celeba.py:ARG`, ARG = variant[,tiny]):
  ebgan     EBGAN, m = 20.
  ebgan_pt  EBGAN-PT: lambda_PT = 0.1.
  dcgan     the DCGAN baseline (binary D, GAN loss).
  tiny      flag: tiny widths, batch 4, 3 steps (tests, smoke runs).

Examples:
  python -m ebgan_jax.main --config=configs/celeba.py:ebgan_pt --workdir=/tmp/celeba_ebgan_pt
  python -m ebgan_jax.main --config=configs/celeba.py:dcgan --workdir=/tmp/celeba_dcgan
  python -m ebgan_jax.main --config=configs/celeba.py:ebgan --config.ema_decay=0.999 \
      --config.tfds_data_dir=/data/tfds --workdir=/tmp/celeba_ebgan_ema
"""

from configs import common

VARIANTS = ('ebgan', 'ebgan_pt', 'dcgan', 'ebgan,tiny', 'ebgan_pt,tiny', 'dcgan,tiny')

MARGIN = 20.0  # Sec. 4.3: m = 20 for CelebA.
CENTER_CROP = 108


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant='ebgan_pt', tiny=False)
  config = common.conv_config(arg, dataset='celeb_a', family='dcgan64', image_size=64,
                              margin=MARGIN, tiny_width_mult=1 / 32)
  config.center_crop = CENTER_CROP
  config.num_epochs = 20  # Not in the paper; 20 x (162,770 // 64) = 50,860 steps at batch 64.
  return config
