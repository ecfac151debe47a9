"""Connects the processes of a multi-host run with `jax.distributed`.

Three ways to launch, each checked in this order:
  * explicit: coordinator address, process count and process id (main.py's flags, or the
    environment variables UCSH_COORDINATOR_ADDRESS, UCSH_NUM_PROCESSES, UCSH_PROCESS_ID, which
    `launch/local.sh` sets);
  * a SLURM job step with several tasks, or a Cloud TPU pod: JAX reads the cluster's own
    environment (`jax.distributed.initialize()` with no arguments);
  * otherwise a single process: nothing to do.
"""

import os
from typing import Optional

from absl import logging
import jax


def _cluster_has_several_processes() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
    return True
  workers = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([w for w in workers.split(",") if w]) > 1


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Initialises jax.distributed when this is one of several processes; else does nothing."""
  coordinator_address = coordinator_address or os.environ.get("UCSH_COORDINATOR_ADDRESS")
  if num_processes is None and "UCSH_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["UCSH_NUM_PROCESSES"])
  if process_id is None and "UCSH_PROCESS_ID" in os.environ:
    process_id = int(os.environ["UCSH_PROCESS_ID"])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("a coordinator address needs the number of processes and this "
                       "process's id (UCSH_NUM_PROCESSES / UCSH_PROCESS_ID)")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _cluster_has_several_processes():
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d.", jax.process_index(), jax.process_count())
