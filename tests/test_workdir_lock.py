"""One run per workdir: the lock, its holder in the error, no stale lock after kill -9, and two
main jobs started together on one workdir."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ucsh_jax import errors
from ucsh_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path), "first run"):
    with pytest.raises(errors.UserError, match=rf"in use by first run on host .*, pid "
                                               rf"{os.getpid()}, started"):
      workdir_lock.WorkdirLock(str(tmp_path), "second run").acquire()
  # Released: the next run gets it.
  with workdir_lock.WorkdirLock(str(tmp_path), "third run"):
    pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\nfrom ucsh_jax import workdir_lock\n"
       f"workdir_lock.WorkdirLock({str(tmp_path)!r}, 'holder').acquire()\n"
       "print('locked', flush=True)\ntime.sleep(600)\n"],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.UserError, match=f"pid {holder.pid}"):
      workdir_lock.WorkdirLock(str(tmp_path), "while held").acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  finally:
    holder.kill()
  assert (tmp_path / workdir_lock.LOCK_FILE).exists()  # The file stays; the lock does not.
  with workdir_lock.WorkdirLock(str(tmp_path), "after the kill"):
    pass


def _main(workdir, cwd):
  return subprocess.Popen(
      [sys.executable, "-m", "ucsh_jax.main", f"--config={REPO}/configs/test.py",
       f"--workdir={workdir}"], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=dict(os.environ, PYTHONPATH=REPO))


def _final_params(workdir):
  steps = max(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints")) if p.isdigit())
  return ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(steps), "state"))["params"]


def test_two_runs_at_once_on_one_workdir_and_a_relative_workdir(tmp_path):
  """The second run refuses at once; the first finishes like a run alone (given here by a
  relative --workdir, which must give the same run as an absolute one)."""
  alone = _main("runs/alone", cwd=tmp_path)  # Relative to tmp_path.
  shared = tmp_path / "shared"
  first = _main(shared, cwd=tmp_path)
  while not (shared / workdir_lock.LOCK_FILE).exists() and first.poll() is None:
    time.sleep(0.05)
  time.sleep(0.5)
  second = _main(shared, cwd=tmp_path)
  _, second_err = second.communicate(timeout=300)
  _, first_err = first.communicate(timeout=600)
  _, alone_err = alone.communicate(timeout=600)

  assert second.returncode == 2, second_err[-3000:]
  assert f"error: workdir {shared} is in use by ucsh_jax.main --mode=train" in second_err
  assert f"pid {first.pid}" in second_err
  assert first.returncode == 0, first_err[-3000:]
  assert alone.returncode == 0, alone_err[-3000:]
  with open(shared / "results.json") as f:
    together = json.load(f)
  with open(tmp_path / "runs" / "alone" / "results.json") as f:
    by_itself = json.load(f)
  assert together["map"] == by_itself["map"]
  for a, b in zip(jax.tree.leaves(_final_params(shared)),
                  jax.tree.leaves(_final_params(tmp_path / "runs" / "alone"))):
    np.testing.assert_array_equal(a, b)
  with open(tmp_path / "runs" / "alone" / "run.json") as f:
    assert json.load(f)["config_file"] == f"{REPO}/configs/test.py"
