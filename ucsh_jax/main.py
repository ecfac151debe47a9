"""Main entry point: `python -m ucsh_jax.main --config=configs/digits.py --workdir=DIR`.

This file is intentionally short: the logic lives in `train.py` and `evaluate.py`, which can be
tested on their own. With several processes (a SLURM job, a TPU pod, `launch/local.sh`) every
process runs this same command; `jax.distributed` connects them.
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ucsh_jax import distributed
from ucsh_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, splits, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "encode"],
                  "train: train (resuming) then evaluate; eval: score the latest checkpoint; "
                  "encode: also write the query/database codes to WORKDIR/codes.npz.")
config_flags.DEFINE_config_file("config", "configs/digits.py", "Config file.",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-process runs launched by hand.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's id in a multi-process run.")
flags.mark_flags_as_required(["workdir"])


def _quiet_library_info(record) -> bool:
  """Keeps Orbax's and grain's per-save INFO chatter out of the progress log (warnings stay)."""
  noisy = any(f"/{package}/" in record.pathname for package in ("orbax", "grain"))
  return record.levelno > std_logging.INFO if noisy else True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  logging.get_absl_handler().addFilter(_quiet_library_info)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  logging.info("JAX process %d of %d; %d local and %d global devices (%s).",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, write_codes=FLAGS.mode == "encode")


if __name__ == "__main__":
  app.run(main)
