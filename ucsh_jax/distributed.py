"""Connects the processes of a multi-host run with `jax.distributed`.

Three ways to launch, each checked in this order:
  * explicit: coordinator address, process count and process id (main.py's flags, or the
    environment variables UCSH_COORDINATOR_ADDRESS, UCSH_NUM_PROCESSES, UCSH_PROCESS_ID, which
    `launch/local.sh` sets);
  * a cluster JAX knows: a SLURM job step with several tasks, a TPU pod that names its workers in
    TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES, or UCSH_DISTRIBUTED=auto (which
    `launch/tpu_pod.sh` sets: a Cloud TPU VM describes its pod in the metadata server, not in the
    environment). JAX reads the cluster's own description (`jax.distributed.initialize()` with
    no arguments); under SLURM it gives task i of a node the node's GPU i;
  * otherwise a single process: nothing to do.
Must run before anything else touches JAX devices.
"""

import os
from typing import Optional

import jax

from ucsh_jax import errors


def _several(variable: str) -> bool:
  return len([x for x in os.environ.get(variable, "").split(",") if x]) > 1


def _cluster_has_several_processes() -> bool:
  if os.environ.get("UCSH_DISTRIBUTED") == "auto":
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
    return True
  return _several("TPU_WORKER_HOSTNAMES") or _several("TPU_PROCESS_ADDRESSES")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Initialises jax.distributed when this is one of several processes; else does nothing.

  Arguments left None are read from UCSH_COORDINATOR_ADDRESS (host:port of process 0),
  UCSH_NUM_PROCESSES and UCSH_PROCESS_ID. Collectives between CPU devices of different
  processes use gloo.
  """
  coordinator_address = coordinator_address or os.environ.get("UCSH_COORDINATOR_ADDRESS")
  if num_processes is None and "UCSH_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["UCSH_NUM_PROCESSES"])
  if process_id is None and "UCSH_PROCESS_ID" in os.environ:
    process_id = int(os.environ["UCSH_PROCESS_ID"])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise errors.UserError(
          f"coordinator address {coordinator_address!r} given without the number "
          f"of processes ({num_processes}) or this process's id ({process_id}): "
          "set --num_processes/--process_id or UCSH_NUM_PROCESSES/UCSH_PROCESS_ID")
    if not 0 <= process_id < num_processes:
      raise errors.UserError(f"process id {process_id} is not in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _cluster_has_several_processes():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
