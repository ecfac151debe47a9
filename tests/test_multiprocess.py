"""Two processes on 127.0.0.1 (`launch/local.sh 2 2`: 2 CPU devices each, gloo collectives)
train the tiny config to the same parameters as one process with 4 devices, across a stop
(the first launch ends after epoch 1) and a resume from the shared checkpoint.

Every run is a process group started in its own session, bounded by a timeout and killed
(SIGKILL to the whole group) in a `finally`, whatever happens. XLA's backend optimisation level
is 0 in every run here: the same programs, compiled several times faster on this CPU.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import test as test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # Per launch; a healthy one takes under a minute on 2 busy cores.
# Plain SGD: Adam divides each update by the gradient's magnitude, which turns the ulp-level
# differences of a different all-reduce order into visible ones where a gradient is near zero.
LEARNING_RATE = 0.005
MAIN_ARGS = ["--config=configs/test.py", "--config.optimizer.name=sgd",
             f"--config.optimizer.learning_rate={LEARNING_RATE}"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  """This environment without the test's forced 8 devices or any multi-process setting."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("UCSH_", "XLA_FLAGS"))}
  env.update(JAX_PLATFORMS="cpu", PYTHON=sys.executable,
             XLA_FLAGS="--xla_backend_optimization_level=0", **extra)
  return env


def _start(command, env, log_path) -> subprocess.Popen:
  with open(log_path, "w") as log:  # The child keeps its own descriptor.
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _run_all(launches):
  """Starts every (command, env, log path) at once; returns their logs once all have exited.

  A launch still running after TIMEOUT_S is killed, and fails like one that exits non-zero.
  Every process group is killed at the end, whatever happens.
  """
  processes = []
  try:
    for command, env, log_path in launches:
      processes.append(_start(command, env, log_path))
    deadline = time.monotonic() + TIMEOUT_S
    for process in processes:
      process.wait(timeout=max(deadline - time.monotonic(), 1))
  except subprocess.TimeoutExpired:
    pass  # Killed below; the return code says so.
  finally:
    for process in processes:
      try:
        os.killpg(process.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      process.wait()
  logs = []
  for process, (command, _, log_path) in zip(processes, launches):
    with open(log_path) as f:
      logs.append(f.read())
    assert process.returncode == 0, (f"{' '.join(command)} exited {process.returncode} "
                                     f"(-9: killed after {TIMEOUT_S} s):\n{logs[-1][-4000:]}")
  return logs


def _two_processes(workdir, log_path, *args):
  command = ["bash", "launch/local.sh", "2", "2", "--", *MAIN_ARGS, f"--workdir={workdir}", *args]
  return command, _env(UCSH_PORT=str(_free_port())), log_path


def _one_process(workdir, log_path, *args):
  command = [sys.executable, "-m", "ucsh_jax.main", *MAIN_ARGS, f"--workdir={workdir}", *args]
  env = _env()
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
  return command, env, log_path


def _saved(workdir, step, item="state"):
  """A checkpoint item restored onto one device of this process (it was saved by another
  topology, so Orbax needs a target)."""
  path = os.path.join(workdir, "checkpoints", str(step), item)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return jax.device_get(checkpointer.restore(path, target))


def test_two_processes_stop_resume_and_match_one_process(tmp_path):
  config = test_config.get_config()
  spe = config.data.num_train // config.batch_size
  steps = 2 * spe
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"

  # Epoch 1 on two processes (they stop there), and the 2-epoch reference alongside.
  first, _ = _run_all([
      _two_processes(multi, tmp_path / "first.log", "--config.num_epochs=1"),
      _one_process(single, tmp_path / "single.log", "--config.num_epochs=2")])
  assert "JAX process 0 of 2; 2 local and 4 global devices" in first
  with open(multi / "results.json") as f:
    assert json.load(f)["steps"] == spe
  for name in ("process_0-of-2.json", "process_1-of-2.json"):  # grain state of each host.
    assert (multi / "checkpoints" / str(spe) / "data" / name).exists()

  # Both processes again with 2 epochs: they resume from the checkpoint of step `spe`.
  second, = _run_all([_two_processes(multi, tmp_path / "second.log", "--config.num_epochs=2")])
  assert f"Resumed from step {spe}" in second
  lines = second.splitlines()
  assert [line for line in lines if f"step {steps}/{steps}  loss" in line]
  # Process 1 logs no INFO line but jax.distributed's own, before main.py sets the verbosity.
  assert not [line for line in lines if line.startswith("[process 1] I")
              and "Connecting to JAX distributed service" not in line]

  # The gradient all-reduce adds the 4 devices' terms in another order across processes (gloo)
  # than within one, so the parameters agree to float rounding, not bit for bit.
  ref_state, state = _saved(single, steps), _saved(multi, steps)
  assert int(state["step"]) == int(ref_state["step"]) == steps
  ref_leaves, leaves = jax.tree.leaves(ref_state["params"]), jax.tree.leaves(state["params"])
  assert len(leaves) == len(ref_leaves) > 0
  for ref, got in zip(ref_leaves, leaves):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  ref_epoch, epoch = _saved(single, steps, "epoch"), _saved(multi, steps, "epoch")
  np.testing.assert_array_equal(epoch["assignments"], ref_epoch["assignments"])

  with open(single / "results.json") as f:
    ref_results = json.load(f)
  with open(multi / "results.json") as f:
    results = json.load(f)
  assert results["steps"] == ref_results["steps"] == steps
  assert results["map"] == ref_results["map"]
  assert results["precision_at_k"] == ref_results["precision_at_k"]
