"""`python -m ucsh_jax.report --workdir=W [--compare=W2,W3]`: writes W/report/index.html.

This file is intentionally short: the report is built by `ucsh_jax.report.build`.
"""

from absl import flags
from absl import logging

from ucsh_jax import cli
from ucsh_jax import workdir_lock
from ucsh_jax.report import build

_WORKDIR = flags.DEFINE_string("workdir", None, "A UCSH run's workdir.", required=True)
_COMPARE = flags.DEFINE_list(
    "compare", [], "More workdirs to compare with (UCSH runs or ucsh_jax.baselines runs on the "
    "same splits and topk); baselines under --workdir are found without it.")


def main(argv):
  del argv  # cli.run refuses arguments other than flags.
  workdir = cli.absolute_path(_WORKDIR.value)
  workdir_lock.check_workdir(workdir, writable=True)  # The report is written into it.
  path = build.write_report(workdir, cli.absolute_paths(_COMPARE.value))
  logging.info("Wrote %s", path)
  print(path)


if __name__ == "__main__":
  cli.run(main)
