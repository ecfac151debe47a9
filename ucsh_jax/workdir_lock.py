"""One run per workdir: an exclusive lock on `WORKDIR/.lock`, held by process 0 of a run.

The lock is an `flock` on the file, so the operating system drops it when the holder exits in
any way (kill -9 included): a stale file never blocks the next run. The file's content names the
holder (host, pid, command, start time) for the error a second run gets. The other processes of
a multi-process run do not lock; process 0 tells them whether it got the lock.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
from typing import Iterator, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from ucsh_jax import errors

LOCK_FILE = ".lock"


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    return (f"{info['command']} on host {info['host']}, pid {info['pid']}, started "
            f"{info['started']}")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (its details are not written yet)"


class WorkdirLock:
  """`with WorkdirLock(workdir, "train"):` ... raises UserError if another run holds it."""

  def __init__(self, workdir: str, command: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.workdir = workdir
    self.command = command
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    """Takes the lock without waiting; UserError naming the holder if it is taken."""
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise errors.UserError(f"workdir {self.workdir} is in use by {_holder(self.path)}",
                             hint="wait for that run to finish, or use another --workdir")
    info = {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # Closing the descriptor drops the flock.
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def lock_for_run(workdir: str, command: str) -> Iterator[None]:
  """`with lock_for_run(workdir, command):` process 0 holds the lock for the block; every
  process raises the same UserError if it could not take it."""
  lock = WorkdirLock(workdir, command)
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except errors.UserError as e:
      error = e
  if jax.process_count() > 1:
    failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(failed) and error is None:
      error = errors.UserError(f"workdir {workdir} is in use by another run (process 0 could "
                               "not lock it)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    lock.release()
