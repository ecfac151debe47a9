"""Reading the `.npz` files a user gives or a run wrote, with errors that name the file.

  arrays = npz.read(path, "feature file", required=("features", "labels"))

A missing file, one that is empty, cut short or damaged (not a zip archive, a bad member) and
one that lacks a required array are each a UserError naming the file; nothing is unpickled.
"""

from typing import Dict, Optional, Sequence

import os
import zipfile

import numpy as np

from ucsh_jax import errors

# What np.load and reading a member raise for a file that is not a whole .npz.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def read(path: str, what: str, required: Sequence[str] = (),
         hint: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Every array of the .npz `path` (`what` it is, for messages: "feature file", ...)."""
  if not os.path.exists(path):
    raise errors.UserError(f"{what} {path} does not exist", hint=hint)
  if os.path.isdir(path):
    raise errors.UserError(f"{what} {path} is a folder, not an .npz file", hint=hint)
  try:
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # A single .npy array.
      raise errors.UserError(f"{what} {path} is an .npy array, not an .npz of named arrays",
                             hint=hint)
    with loaded:
      arrays = {key: loaded[key] for key in loaded.files}
  except errors.UserError:  # A ValueError.
    raise
  except _READ_ERRORS as e:
    if os.path.getsize(path) == 0:
      reason = "the file is empty"
    elif isinstance(e, OSError) and e.strerror:
      reason = e.strerror
    else:
      detail = f" ({e})" if isinstance(e, zipfile.BadZipFile) else ""
      reason = f"it is not a whole .npz: cut short, damaged or of another format{detail}"
    raise errors.UserError(f"cannot read {what} {path}: {reason}", hint=hint) from e
  missing = [key for key in required if key not in arrays]
  if missing:
    raise errors.UserError(
        f"{what} {path} has no {', '.join(repr(k) for k in missing)} array (it has "
        f"{', '.join(sorted(arrays)) or 'none'})", hint=hint)
  return arrays
