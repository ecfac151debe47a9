"""Main entry point: `python -m ucsh_jax.main --config=configs/digits.py --workdir=DIR`.

This file is intentionally short: the logic lives in `train.py` and `evaluate.py`, which can be
tested on their own. Every path is made absolute here, before any library sees it; the workdir
is locked for the run (process 0 holds the lock) and keeps the run's record (`run.json`, written
once the config validated and the data loaded), which a later run on it must agree with. With
several processes (a SLURM job, a TPU pod, `launch/local.sh`) every process runs this same
command; `jax.distributed` connects them.
"""

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ucsh_jax import checkpointing
from ucsh_jax import cli
from ucsh_jax import distributed
from ucsh_jax import extract
from ucsh_jax import run_record
from ucsh_jax import train
from ucsh_jax import workdir_lock

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, splits, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "encode", "features"],
                  "train: train (resuming) then evaluate; eval: score the latest checkpoint; "
                  "encode: also write the query/database codes to WORKDIR/codes.npz and the "
                  "database index; features: write the eval-mode features of every item to "
                  "WORKDIR/features.npz (from the latest checkpoint, else the initial weights).")
config_flags.DEFINE_config_file("config", "configs/digits.py", "Config file.",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for multi-process runs launched by hand.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's id in a multi-process run.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv  # cli.run refuses arguments other than flags.
  config = cli.resolve_config(FLAGS.config)
  workdir = cli.absolute_path(FLAGS.workdir)
  config_file = cli.absolute_path(config_flags.get_config_filename(FLAGS["config"]))
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
  logging.info("%s: JAX process %d of %d; %d local and %d global devices (%s); config %s; "
               "workdir %s.", FLAGS.mode, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform,
               config_file, workdir)
  with workdir_lock.lock_for_run(workdir, f"ucsh_jax.main --mode={FLAGS.mode}"):
    # A train start in a workdir that holds no checkpoint continues nothing: a record left by
    # a start that failed before saving (a corrupt image found in its first epoch, say) is
    # replaced, whatever config or data it names.
    fresh_start = (FLAGS.mode == "train"
                   and checkpointing.latest_saved_step(train.checkpoint_dir(workdir)) is None)
    if not fresh_start:
      run_record.check(config, workdir)  # Every process, so that all of them stop together.
    elif run_record.read(workdir) is not None:
      logging.warning("%s holds no checkpoint: its run record is replaced by this run's.",
                      workdir)
    if FLAGS.mode == "train":

      def record(run: train.Run) -> None:  # Config valid, data loaded: the run starts.
        if jax.process_index() == 0:
          if fresh_start:
            run_record.write(config, workdir, config_file, run.data_fingerprint)
          else:
            run_record.check_or_write(config, workdir, config_file, run.data_fingerprint)

      train.train_and_evaluate(config, workdir, started=record)
    elif FLAGS.mode == "features":
      logging.info("Features written to %s.", extract.extract_features(config, workdir))
    else:
      train.evaluate_checkpoint(config, workdir, write_codes=FLAGS.mode == "encode")


if __name__ == "__main__":
  cli.run(main)
