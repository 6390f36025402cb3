"""Trains a run: python -m ebgan_jax.main --config=configs/FILE.py[:ARG] --workdir=DIR.

ARG picks a variant and flags, comma-separated (`:ebgan_pt`, `:ebgan,patches,tiny`);
`--config.FIELD=VALUE` overrides any field (`--config.loss.margin=20`); `--print_config`
prints the resulting config and exits. The configs this command trains:

  configs/mnist_fc.py      gan | ebgan | ebgan_pt           Figure 4 (a)(b)(c), MNIST MLPs
  configs/celeba.py        ebgan | ebgan_pt | dcgan [,tiny]   Sec. 4.3, 64x64 faces, m = 20
  configs/lsun_bedroom.py  ebgan | ebgan_pt | dcgan [,patches][,tiny]
                                                             Sec. 4.3 / App. F, m = 80
  configs/imagenet128.py   ebgan | ebgan_pt | dcgan [,tiny]   Sec. 4.4, 128x128, m = 40
  configs/imagenet256.py   ebgan | ebgan_pt | dcgan [,tiny]   Sec. 4.4, 256x256 dogs, m = 80

Two configs belong to other commands: configs/mnist_grid.py (the grid of Sec. 4.1:
`python -m experiments.grid_search`) and configs/mnist_ssl.py (Table 2:
`python -m experiments.semi_supervised`).

Kept thin (as flax's examples do): the logic lives in library modules that the tests and the
notebook import. On a multi-host TPU pod or GPU cluster pass --distributed (JAX then finds
the coordinator itself) or name it with --coordinator_address/--num_processes/--process_id.
"""

from __future__ import annotations


import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ebgan_jax import checkpoint, train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples (local or '
                    'gs://...).')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process index (multi-host).')
flags.DEFINE_string('cpu_collectives', 'gloo', 'CPU collectives for multi-process CPU runs.')
flags.DEFINE_bool('print_config', False, 'Print the config (after --config.FIELD=VALUE '
                  'overrides) and exit without training.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None:
    raise app.UsageError('Pass --config=configs/FILE.py[:ARG], e.g. configs/mnist_fc.py:ebgan_pt')
  if FLAGS.print_config:
    print(FLAGS.config)
    return
  if not FLAGS.workdir:
    raise app.UsageError('Pass --workdir=DIR (local or gs://...): where the run keeps its '
                         'checkpoints, logs and samples.')
  checkpoint.quiet_orbax_logs()
  if FLAGS.distributed or FLAGS.coordinator_address:
    # Only the CPU client reads this. Set it unconditionally: asking for the backend
    # (jax.default_backend()) first would start XLA, and initialize() must come before that.
    jax.config.update('jax_cpu_collectives_implementation', FLAGS.cpu_collectives)
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  logging.info('JAX process %d of %d, %d local / %d global devices (%s).', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.default_backend())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
