"""EBGAN on full ImageNet at 128x128 (Sec. 4.4, Figure 7; App. C architectures).

Data: tfds `imagenet2012`, train split (1.28M images; tfds needs the manual download of the
ILSVRC-2012 tar files into `<tfds_data_dir>/downloads/manual/`). The shorter side is resized
to 128 and the central 128x128 square taken (the paper does not state its crop).
Models: family 'imagenet' at 128x128 (G with noise planes 100-64-32-16-8-4; auto-encoder D).
The `dcgan` variant's binary D (the encoder's 4c2s layers and a logit) is not in the paper,
which shows no ImageNet GAN baseline. Margin m = 40 (Sec. 4.4); Adam lr 0.0002, beta1 0.5,
batch 64 (Radford et al., 2015, which App. C follows).

Variants (`--config=configs/imagenet128.py:ARG`, ARG = variant[,tiny]):
  ebgan, ebgan_pt (lambda_PT = 0.1), dcgan;  tiny: tiny widths, batch 4, 3 steps.

Examples:
  python -m ebgan_jax.main --config=configs/imagenet128.py:ebgan_pt \
      --config.tfds_data_dir=/data/tfds --workdir=/tmp/imagenet128_ebgan_pt
  python -m ebgan_jax.main --config=configs/imagenet128.py:ebgan --workdir=/tmp/imagenet128_ebgan
"""

from configs import common

VARIANTS = ('ebgan', 'ebgan_pt', 'dcgan', 'ebgan,tiny', 'ebgan_pt,tiny', 'dcgan,tiny')

MARGIN = 40.0  # Sec. 4.4: m = 40 at 128x128.


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant='ebgan_pt', tiny=False)
  config = common.conv_config(arg, dataset='imagenet2012', family='imagenet', image_size=128,
                              margin=MARGIN, tiny_width_mult=1 / 64)
  config.num_epochs = 10  # Not in the paper; 20k steps per epoch at batch 64.
  return config
