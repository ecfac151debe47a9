"""tfds builder for CIFAR-10 from the official python archive, prepared without TensorFlow.

The archive `cifar-10-python.tar.gz` holds `cifar-10-batches-py/data_batch_1..5` and `test_batch`:
pickled dicts with b'data' uint8 (N, 3072) (R, G, B planes, each 32x32 row-major) and b'labels'
(N ints); `batches.meta` holds b'label_names'. It is taken from the manual directory when there,
otherwise downloaded. Images are stored as PNG (lossless), in archive order: split 'train' is
data_batch_1..5, split 'test' is test_batch. The prepared data record the archive's sha256.
"""

from typing import Dict, Iterator, Tuple

import io
import pickle
import re
import socket
import tarfile
import urllib.parse

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ucsh_jax import errors
from ucsh_jax import progress
from ucsh_jax.data import fingerprint
from ucsh_jax.data import images
from ucsh_jax.data import tfds_builder

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck")
_CONNECT_TIMEOUT_S = 5.0
# The only globals a CIFAR batch pickle may name: numpy array reconstruction.
_ALLOWED_GLOBALS = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                    ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy.core.multiarray", "_reconstruct")}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts of lists and numpy arrays; refuses anything that could run other code."""

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise pickle.UnpicklingError(f"CIFAR batch asks for {module}.{name}, which is not allowed")
    return super().find_class(module.replace("numpy.core.", "numpy._core."), name)


def _load_pickle(data: bytes, member: str) -> dict:
  try:
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
    raise errors.UserError(f"cannot read {member} in the CIFAR-10 archive: {e}") from e


def unreachable_reason(url: str) -> str:
  """'' when a TCP connection to the url's host opens within a few seconds, else the error."""
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=_CONNECT_TIMEOUT_S).close()
    return ""
  except OSError as e:
    return f"{type(e).__name__}: {e}"


def read_archive(path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Archive -> {'train': (images (N, 32, 32, 3) uint8, labels (N,) int64), 'test': ...}.

  Train is data_batch_1, 2, ... in order (the official archive has 5; all present ones are used).
  Raises ValueError naming the member whose data and labels disagree in length.
  """
  batches = {}
  with tarfile.open(path, "r:gz") as tar:
    for member in tar.getmembers():
      base = member.name.rsplit("/", 1)[-1]
      if member.isfile() and (base == "test_batch" or base == "batches.meta"
                              or re.fullmatch(r"data_batch_\d+", base)):
        batches[base] = _load_pickle(tar.extractfile(member).read(), member.name)
  train_names = sorted((b for b in batches if b.startswith("data_batch_")),
                       key=lambda b: int(b.rsplit("_", 1)[1]))
  for needed in ("test_batch", "data_batch_1"):
    if needed not in batches:
      raise errors.UserError(f"{path}: no cifar-10-batches-py/{needed} in the archive")
  if "batches.meta" in batches:
    names = tuple(n.decode() for n in batches["batches.meta"][b"label_names"])
    if names != LABEL_NAMES:
      raise errors.UserError(
          f"{path}: batches.meta label names {names} are not CIFAR-10's {LABEL_NAMES}")

  def decode(name):
    data = np.asarray(batches[name][b"data"], np.uint8)
    labels = np.asarray(batches[name][b"labels"])
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
      raise errors.UserError(
          f"{path}: {name} has data of shape {data.shape} and {len(labels)} labels; "
          "expected (N, 3072) and N")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)

  train = [decode(name) for name in train_names]
  return {"train": (np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])),
          "test": decode("test_batch")}


class UcshCifar10(tfds_builder.ManualDirBuilder):
  """CIFAR-10: 50,000 train + 10,000 test 32x32 RGB images, 10 classes; features image/label/id."""

  name = "ucsh_cifar10"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Without network access, download {URL} elsewhere and put {ARCHIVE} in the manual "
      "directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="CIFAR-10 from the official python archive.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=LABEL_NAMES),
            "id": tfds.features.Text(),
        }),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        disable_shuffling=True)  # Records stay in archive order.

  def current_source(self):
    """The manual directory's archive; None without one (the config then names a download)."""
    local = self.manual_path / ARCHIVE
    if not local.exists():
      return None
    return {"fingerprint": fingerprint.of_file(local), "origin": str(local)}

  def _archive_path(self, dl_manager):
    local = self.manual_path / ARCHIVE
    if local.exists():
      logging.info("Reading CIFAR-10 from %s", local)
      return local
    reason = unreachable_reason(URL)
    if reason:
      raise errors.UserError(
          f"{ARCHIVE} is not in the manual directory {self.manual_path} and {URL} cannot be "
          f"reached ({reason}). Download it elsewhere and put it at {local} "
          "(or pass --config.data.manual_dir=DIR).")
    return dl_manager.download(URL)

  def _split_generators(self, dl_manager):
    path = self._archive_path(dl_manager)
    arrays = read_archive(path)
    self._record_source({"fingerprint": fingerprint.of_file(path),
                         "origin": str(path) if path == self.manual_path / ARCHIVE else URL})
    return {split: self._generate_examples(split, *arrays[split]) for split in ("train", "test")}

  def _generate_examples(self, split, images_NxHxWx3, labels_N) -> Iterator:
    examples = progress.iterate(zip(images_NxHxWx3, labels_N), f"{self.name} {split}: preparing",
                                len(labels_N))
    for i, (image, label) in enumerate(examples):
      key = f"{split}_{i:05d}"
      yield key, {"image": images.encode_png(image), "label": int(label), "id": key}
