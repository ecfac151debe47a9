"""One run per workdir: an exclusive lock on `WORKDIR/.lock`, held by process 0 of a run.

The lock is an `flock` on the file, so the operating system drops it when the holder exits in
any way (kill -9 included): a stale file never blocks the next run. The file's content names the
holder (host, pid, command, start time) for the error a second run gets. The other processes of
a multi-process run do not lock; process 0 tells them whether it got the lock.

`check_workdir` turns a `--workdir` that cannot be one (a file, a path under a file, a folder
that cannot be made or written in) into a UserError naming it; the lock checks its workdir with
it, so every command that writes a workdir does.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import tempfile
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


def _file_on_the_way(path: str) -> Optional[str]:
  """`path` or its nearest existing ancestor when that is not a folder (None when it is one)."""
  while True:
    if os.path.lexists(path):
      return None if os.path.isdir(path) else path
    parent = os.path.dirname(path)
    if parent == path:
      return None
    path = parent


def check_workdir(workdir: str, *, create: bool = False, writable: bool = False) -> None:
  """A UserError naming `workdir` unless it is a folder (made when missing, with `create`) that
  this process can create files in (checked by making one, with `writable`)."""
  blocking = _file_on_the_way(workdir)
  if blocking == workdir:
    raise errors.UserError(f"workdir {workdir} is a file, not a folder",
                           hint="give --workdir a folder (new or holding a run)")
  if blocking is not None:
    raise errors.UserError(f"workdir {workdir} cannot be a folder: {blocking} is a file")
  if not os.path.isdir(workdir):
    if not create:
      raise errors.UserError(f"workdir {workdir} does not exist")
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise errors.UserError(f"cannot create the workdir {workdir}: {e.strerror}") from e
  if writable:
    try:
      with tempfile.TemporaryFile(dir=workdir, prefix=".write_test"):
        pass
    except OSError as e:
      raise errors.UserError(f"cannot write in the workdir {workdir}: {e.strerror}",
                             hint="use a --workdir you may write in") from e


class WorkdirLock:
  """`with WorkdirLock(workdir, "train"):` ... raises UserError if another run holds it."""

  def __init__(self, workdir: str, command: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.workdir = workdir
    self.command = command
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    """Takes the lock without waiting; UserError naming the holder if it is taken, or the
    problem with a workdir that cannot be made or written (`check_workdir`)."""
    check_workdir(self.workdir, create=True, writable=True)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise errors.UserError(f"cannot write the lock file {self.path}: {e.strerror}",
                             hint="use a --workdir you may write in") from e
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
