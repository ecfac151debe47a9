"""Prepares a dataset and its protocol splits, then prints the size of each split.

  python -m ucsh_jax.data.prepare --config=configs/cifar.py \
      [--config.data.manual_dir=DIR] [--workdir=DIR]

tfds datasets are downloaded (CIFAR-10) or read from the manual directory and written as
ArrayRecord; the split files go to `<workdir>/splits/` (not written without --workdir). It prints
what the data were prepared from (file, folder or URL) and their fingerprint.
"""

from absl import flags
from ml_collections import config_flags

from ucsh_jax import cli
from ucsh_jax.data import sources
from ucsh_jax.data import splits as splits_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the split files are written.")


def main(argv):
  del argv  # cli.run refuses arguments other than flags.
  config = cli.resolve_config(_CONFIG.value)
  workdir = cli.absolute_path(_WORKDIR.value)
  source = sources.get_source(config.data)
  splits = splits_lib.make_splits(config.data, source, seed=config.seed, workdir=workdir)
  print(f"{config.data.name}: {len(source)} examples")
  if isinstance(source, sources.TfdsSource):
    print(f"  prepared from {source.origin} ({source.fingerprint})")
  for name, idx in zip(splits_lib.SPLIT_NAMES, splits):
    print(f"  {name:<9} {len(idx)}")
  print(f"split files in {workdir}/splits" if workdir
        else "no --workdir: split files not written")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)
