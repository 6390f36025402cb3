"""Checks of the GAN baseline of Figure 4 (a) (RESULTS.md, "Figure 2"): why it fails at 2,000 steps.

  python -m experiments.gan_baseline_check --workdir=DIR [--total_steps=8000]
      [--optim=sgd --lr=0.01] [--d_init_std=0.002] [--diagnose_only]

trains `configs/mnist_fc.py:gan` (nLayerG 5, nLayerD 2, sizeG 1600, sizeD 1024; by default
App. C's SGD at lr 0.01) in DIR with D's gradient norms logged and scores every 2,000 steps,
then diagnoses its last checkpoint:
- whether the samples depend on G's BatchNorm mode: I' of 1,000 samples generated with the
  running statistics (what `sample` and `evaluate` use) and with each batch of 64's own
  statistics (what D saw in training);
- how many of D's 1,024 hidden ReLU units are ever active on 1,000 real digits and on 1,000
  generated ones (nLayerD = 2: D is Dense -> ReLU -> logit, with no BatchNorm).
`--d_init_std` draws D's weights at another standard deviation than App. C's N(0, 0.002): a
sensitivity check of the baseline, not a setting of the paper.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from configs import mnist_fc
from ebgan_jax import data, evaluate, sample, train
from ebgan_jax.models import mlp

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The run folder.', required=True)
flags.DEFINE_integer('total_steps', 8000, 'Training steps (the grid: 2,000).')
flags.DEFINE_enum('optim', 'sgd', ['sgd', 'adam'], "D's and G's optimizer (App. C 4(a): sgd).")
flags.DEFINE_float('lr', 0.01, 'Learning rate of both (App. C 4(a): 0.01).')
flags.DEFINE_float('d_init_std', 0.002, "Std of D's initial weights (App. C: 0.002).")
flags.DEFINE_bool('diagnose_only', False, 'Skip training; diagnose the run already in workdir.')

NUM = 1000


def train_run() -> None:
  config = mnist_fc.get_config('gan')
  config.total_steps = FLAGS.total_steps
  config.optim.optim_d = config.optim.optim_g = FLAGS.optim
  config.optim.lr_d = config.optim.lr_g = FLAGS.lr
  config.grad_norm_metrics = True
  config.log_every_steps, config.eval_every_steps = 250, 2000
  # Read when the modules are called (create_state), so it reaches both D kinds.
  mlp.D_KERNEL_INIT = nn.initializers.normal(stddev=FLAGS.d_init_std)
  train.train_and_evaluate(config, FLAGS.workdir)


def diagnose(workdir: str) -> None:
  trainer, state, step = sample.load_generator(workdir)
  config = trainer.config
  params, _ = evaluate.get_classifier(config, evaluate.classifier_cache_dir(config))
  reference = evaluate.reference_statistics(params, config)
  z = trainer.sample_latents(jax.random.key(0), NUM)
  g_params = trainer.sample_params(state)
  running = trainer.generate(g_params, state.g.batch_stats, z)

  def batch_mode(zb):
    out, _ = trainer.generator.apply({'params': g_params, 'batch_stats': state.g.batch_stats},
                                     zb, train=True, rngs={'noise': jax.random.key(0)},
                                     mutable=['batch_stats'])
    return out

  own = jnp.concatenate([batch_mode(z[i:i + 64]) for i in range(0, NUM - 64 + 1, 64)])
  for name, images in (('running statistics', running), ('batch statistics', own)):
    s = evaluate.score_images(params, images, reference)
    print(f"step {step}, G's BatchNorm with {name}: I' {s['i_prime']:.3f}, modes "
          f"{s['modes_covered']}, classes {s['class_histogram']}")
  real = jnp.asarray(data.split_arrays(config, 'train')[0][:NUM]).reshape(NUM, -1)
  layer = state.d.params['dense_0']
  for name, x in (('real digits', real), ('generated digits', running.reshape(NUM, -1))):
    active = np.asarray(jnp.any(x @ layer['kernel'] + layer['bias'] > 0, axis=0))
    print(f"step {step}, D's hidden units ever active on {NUM} {name}: {active.mean():.1%} "
          f'of {active.size}')


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  if not FLAGS.diagnose_only:
    train_run()
  diagnose(FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
