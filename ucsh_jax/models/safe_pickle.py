"""Reads torch `.pth` state dicts into NumPy without torch and without running code from the file.

Two layouts exist. Since torch 1.6 `torch.save` writes a zip: `<dir>/data.pkl` is a pickle
whose tensors refer by persistent id ('storage', storage_type, key, location, numel) to raw
little-endian entries `<dir>/data/<key>`. Older files (e.g. torchvision's 2017 VGG16) are
"legacy": five pickles in a row (magic number, protocol 1001, system info, the object, the
list of storage keys) followed, per key, by an int64 element count and the raw bytes.

The unpickler resolves only the globals a state dict needs (OrderedDict, torch.Size, torch's
tensor-rebuild functions and storage types) to inert local stand-ins and refuses every
other global with `UnsafePickleError` before anything is called.
"""

import collections
import dataclasses
import io
import math
import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Tuple

import ml_dtypes
import numpy as np

from ucsh_jax import errors

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# torch.save pickles the magic number first, with pickle protocol 2.
LEGACY_HEADER = pickle.dumps(_LEGACY_MAGIC, protocol=2)[:-1]

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafePickleError(errors.UserError, pickle.UnpicklingError):
  """A pickle asked for a global that a state dict does not need."""


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
  name: str
  dtype: Any


@dataclasses.dataclass(slots=True)
class _Storage:
  """A flat typed buffer; `data` is filled when its bytes are read."""
  dtype: Any
  numel: int
  data: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
  storage: _Storage
  offset: int
  size: Tuple[int, ...]
  stride: Tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """Stand-in for torch._utils._rebuild_tensor(_v2): records where the tensor lies."""
  del unused  # requires_grad, backward hooks, metadata
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"tensor storage is {type(storage).__name__}, not a storage")
  try:
    return _TensorRef(storage, int(storage_offset), tuple(int(n) for n in size),
                      tuple(int(s) for s in stride))
  except (TypeError, ValueError) as e:
    raise pickle.UnpicklingError(f"malformed tensor metadata: {e}") from e


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only `_ALLOWED_GLOBALS` and torch storage types; storages via `load_storage`."""

  def __init__(self, file, path: str, load_storage=None):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self._load_storage = load_storage

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
      return _StorageType(name, _STORAGE_DTYPES[name])
    raise UnsafePickleError(
        f"{self._path}: refusing to load global '{module}.{name}': a weights file may only "
        "hold tensors and OrderedDicts")

  def persistent_load(self, pid):
    if self._load_storage is None or not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self._path}: unsupported persistent id {pid!r}")
    if not isinstance(pid[1], _StorageType):
      raise pickle.UnpicklingError(f"{self._path}: persistent id {pid!r} has no storage type")
    return self._load_storage(pid)


def _read_zip(path: str) -> Any:
  """Unpickles `<dir>/data.pkl` of a zip checkpoint, reading storages from `<dir>/data/`."""
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise errors.UserError(
          f"{path}: a torch zip checkpoint holds one <dir>/data.pkl, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    little_endian = True
    if prefix + "byteorder" in archive.namelist():
      little_endian = archive.read(prefix + "byteorder").strip() == b"little"
    storages = {}

    def load_storage(pid):
      if len(pid) != 5:
        raise pickle.UnpicklingError(f"{path}: storage id {pid!r} needs 5 fields")
      _, storage_type, key, _, numel = pid
      numel = int(numel)
      if key not in storages:
        dtype = np.dtype(storage_type.dtype)
        raw = archive.read(f"{prefix}data/{key}")
        if len(raw) < numel * dtype.itemsize:
          raise errors.UserError(f"{path}: storage {key} holds {len(raw)} bytes, "
                                 f"{numel} x {storage_type.name} needs {numel * dtype.itemsize}")
        data = np.frombuffer(raw, dtype, count=numel)
        storages[key] = _Storage(dtype, numel, data if little_endian else data.byteswap())
      return storages[key]

    with archive.open(pickles[0]) as f:
      return _RestrictedUnpickler(f, path, load_storage).load()


def _read_legacy(path: str) -> Any:
  """Reads a pre-1.6 torch.save file (sequence of pickles followed by raw storages)."""
  storages = {}

  def load_storage(pid):
    if len(pid) != 6 or pid[5] is not None:
      raise pickle.UnpicklingError(f"{path}: unsupported legacy storage id {pid!r} (storage "
                                   "views are not supported)")
    _, storage_type, key, _, numel, _ = pid
    if key not in storages:
      storages[key] = _Storage(storage_type.dtype, int(numel))
    return storages[key]

  with open(path, "rb") as f:
    header = [_RestrictedUnpickler(f, path).load() for _ in range(3)]
    if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
      raise errors.UserError(f"{path}: not a torch legacy checkpoint (magic {header[0]!r}, "
                             f"protocol {header[1]!r})")
    result = _RestrictedUnpickler(f, path, load_storage).load()
    keys = _RestrictedUnpickler(f, path).load()
    little_endian = not isinstance(header[2], dict) or header[2].get("little_endian", True)
    for key in keys:
      if key not in storages:
        raise errors.UserError(f"{path}: storage key {key!r} is not used by any tensor")
      storage = storages[key]
      numel = int.from_bytes(_read_exactly(f, 8, path), "little" if little_endian else "big")
      if numel != storage.numel:
        raise errors.UserError(f"{path}: storage {key} holds {numel} elements, its tensors "
                               f"expect {storage.numel}")
      raw = _read_exactly(f, numel * np.dtype(storage.dtype).itemsize, path)
      data = np.frombuffer(raw, storage.dtype)
      storage.data = data if little_endian else data.byteswap()
    unread = [k for k, s in storages.items() if s.data is None]
    if unread:
      raise errors.UserError(f"{path}: no data for storages {unread}")
  return result


def _read_exactly(f: io.BufferedReader, n: int, path: str) -> bytes:
  data = f.read(n)
  if len(data) != n:
    raise errors.UserError(f"{path}: truncated file (wanted {n} bytes, got {len(data)})")
  return data


def _materialise(tensor: _TensorRef, name: str, path: str) -> np.ndarray:
  """Copies a tensor out of its storage, honouring offset and strides."""
  data = tensor.storage.data
  if len(tensor.size) != len(tensor.stride) or min(tensor.stride + tensor.size, default=0) < 0:
    raise errors.UserError(
        f"{path}: tensor '{name}' has size {tensor.size} and stride {tensor.stride}")
  if math.prod(tensor.size) == 0:
    return np.zeros(tensor.size, data.dtype)
  last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
  if tensor.offset < 0 or last >= data.size or math.prod(tensor.size) > data.size:
    raise errors.UserError(
        f"{path}: tensor '{name}' (offset {tensor.offset}, size {tensor.size}, "
        f"stride {tensor.stride}) reaches past its storage of {data.size} elements")
  strides = tuple(s * data.itemsize for s in tensor.stride)
  return np.lib.stride_tricks.as_strided(data[tensor.offset:], tensor.size, strides).copy()


def read_torch_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Reads a torch.save'd state dict (zip or legacy layout) as {name: NumPy array}.

  Raises:
    UnsafePickleError: the pickle names a global other than OrderedDict, torch's
      tensor-rebuild functions or a storage type; nothing from the file is executed.
    ValueError: the file is not a state dict of tensors, or is truncated or inconsistent.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    is_zip = f.read(4) == b"PK\x03\x04"
  if is_zip:
    result = _read_zip(path)
  else:
    result = _read_legacy(path)
  if not isinstance(result, dict):
    raise errors.UserError(
        f"{path}: expected a state dict, the pickle holds a {type(result).__name__}")
  state_dict = {}
  for name, value in result.items():
    if not isinstance(value, _TensorRef):
      raise errors.UserError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    state_dict[name] = _materialise(value, name, path)
  return state_dict
