"""EBGAN on the dog-breed subset of ImageNet at 256x256 (Sec. 4.4, Figure 8; App. C).

Data: `imagenet2012_dogs` - tfds `imagenet2012` (manual download) filtered to the 118 dog
breeds (`input_pipeline.IMAGENET_DOG_WNIDS`, the WordNet IDs of Vinyals et al., 2016; about
150k train images). The shorter side is resized to 256 and the central 256x256 square taken.
Counting the subset takes one pass over the labels at start-up; set
`--config.num_train_examples=N` to skip it.
Models: family 'imagenet' at 256x256 (G with noise planes 100-64-32-16-8-4-2; auto-encoder
D). The `dcgan` variant's binary D is not in the paper. Margin m = 80 (Sec. 4.4); Adam lr
0.0002, beta1 0.5, batch 64 (Radford et al., 2015, which App. C follows).

Variants (`--config=configs/imagenet256.py:ARG`, ARG = variant[,tiny]):
  ebgan, ebgan_pt (lambda_PT = 0.1), dcgan;  tiny: tiny widths, batch 4, 3 steps.

Examples:
  python -m ebgan_jax.main --config=configs/imagenet256.py:ebgan_pt \
      --config.tfds_data_dir=/data/tfds --workdir=/tmp/imagenet256_dogs_ebgan_pt
  python -m ebgan_jax.main --config=configs/imagenet256.py:ebgan --workdir=/tmp/imagenet256_ebgan
"""

from configs import common

VARIANTS = ('ebgan', 'ebgan_pt', 'dcgan', 'ebgan,tiny', 'ebgan_pt,tiny', 'dcgan,tiny')

MARGIN = 80.0  # Sec. 4.4: m = 80 at 256x256.


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, variant='ebgan_pt', tiny=False)
  config = common.conv_config(arg, dataset='imagenet2012_dogs', family='imagenet',
                              image_size=256, margin=MARGIN, tiny_width_mult=1 / 64)
  config.num_train_examples = 0  # 0: count the subset (one pass over the labels).
  config.num_epochs = 50  # Not in the paper; ~2.3k steps per epoch at batch 64.
  return config
