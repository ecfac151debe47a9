"""Content fingerprints of a dataset's source: they tie prepared data, splits and runs to it.

A fingerprint is a short string:
- `sha256:<hex>`: the bytes of one file (the CIFAR-10 archive, a feature file);
- `files:<n>:<hex>`: n files of a folder source, the sha256 of one `<path> <size>` line per file
  (path relative to the folder, so a moved folder keeps its fingerprint; a file added, removed,
  renamed or resized changes it), and of the bytes of the small list and label files named as
  `content` (their 0/1 values can change without changing their size);
- `arrays:<hex>`: arrays in memory (the bundled digits).
"""

from typing import Iterable, Sequence

import hashlib
import os

import numpy as np

_CHUNK = 1 << 20


def _file_sha256(path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def of_file(path) -> str:
  """`sha256:<hex>` of the file's bytes."""
  return f"sha256:{_file_sha256(path)}"


def of_files(root, paths: Sequence, content: Iterable = ()) -> str:
  """`files:<n>:<hex>` of `paths` (n files under `root`; a missing one counts as size -1) and of
  the bytes of the files in `content` (also under `root`)."""
  digest = hashlib.sha256()
  paths = list(paths)
  for path in paths:
    try:
      size = os.path.getsize(path)
    except OSError:
      size = -1
    digest.update(f"{os.path.relpath(path, root)} {size}\n".encode())
  for path in content:
    digest.update(f"{os.path.relpath(path, root)} {_file_sha256(path)}\n".encode())
  return f"files:{len(paths)}:{digest.hexdigest()}"


def of_arrays(*arrays: np.ndarray) -> str:
  """`arrays:<hex>` of the arrays' dtypes, shapes and bytes."""
  digest = hashlib.sha256()
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str} {array.shape}\n".encode())
    digest.update(array.tobytes())
  return f"arrays:{digest.hexdigest()}"


def short(fingerprint: str) -> str:
  """The fingerprint cut to 12 hex digits, for messages."""
  head, _, digits = fingerprint.rpartition(":")
  return f"{head}:{digits[:12]}"
