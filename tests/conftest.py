"""Test set-up, applied before JAX is imported anywhere (subprocesses inherit it too).

- 8 forced CPU devices, for the multi-device tests.
- `jax_numpy_rank_promotion="raise"`: an accidental broadcast between arrays of different rank
  fails loudly instead of computing something else.
- XLA's backend optimisation level 0: the tests run tiny programs whose compile time (about 9x
  longer at the default level for the tiny VGG16) dwarfs their run time.
- A compilation cache shared by the whole test session (and the subprocesses it starts), so the
  same small programs compiled by several tests are compiled once. It starts empty every
  session: no test depends on anything left by an earlier run.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUMPY_RANK_PROMOTION", "raise")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE_DIR = tempfile.mkdtemp(prefix="ucsh-jax-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
else:
  _CACHE_DIR = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
  del exitstatus
  del session
  # Only the process that made the cache removes it (pytest-xdist workers inherit it).
  if _CACHE_DIR is not None:
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)
