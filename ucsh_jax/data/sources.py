"""`get_source`: the dataset a config names, as a random-access source of images or features."""

from typing import Dict, Protocol, Sequence, Tuple

import os

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ucsh_jax import errors
from ucsh_jax.data import cifar10
from ucsh_jax.data import digits
from ucsh_jax.data import features
from ucsh_jax.data import fingerprint as fingerprint_lib
from ucsh_jax.data import folders
from ucsh_jax.data import images
from ucsh_jax.data import mirflickr
from ucsh_jax.data import nus_wide

NAMES = ("digits", "cifar10", "nus_wide", "mirflickr", "image_folder", "features")
# data.name -> (builder, tfds splits concatenated in this order, label feature).
_TFDS = {
    "cifar10": (cifar10.UcshCifar10, ("train", "test"), "label"),
    "nus_wide": (nus_wide.UcshNusWide, ("train",), "labels"),
    "mirflickr": (mirflickr.UcshMirflickr, ("train",), "labels"),
}
_LABEL_CACHE = "ucsh_labels.npy"  # Written next to the prepared records.


class Source(Protocol):
  """Random access to a dataset.

  `source[i]` is {"image": uint8 (H, W, 3) RGB} (kind "image") or {"features": float32 (d,)}
  (kind "features"), plus "label": int32 () or multi-hot int32 (c,). `labels` holds every label,
  (n,) or (n, c) int32, read without decoding images. `fingerprint` identifies the data by
  content (see `fingerprint.py`; set by `get_source`).
  """

  kind: str
  labels: np.ndarray
  fingerprint: str

  def __len__(self) -> int:
    ...

  def __getitem__(self, i: int) -> dict:
    ...


class TfdsSource:
  """Prepared tfds splits, read with `tfds.data_source` (no TensorFlow) and concatenated.

  Images are decoded with PIL to RGB here (not by tfds), so gray or CMYK JPEGs come out
  (H, W, 3) and a record that does not decode raises CorruptImageError naming it.
  """

  kind = "image"

  def __init__(self, name: str, parts: Sequence, labels: np.ndarray):
    self.name = name
    self._parts = list(parts)
    self._starts = np.cumsum([0] + [len(p) for p in parts])
    if len(labels) != self._starts[-1]:
      raise errors.UserError(f"{name}: {len(labels)} labels for {self._starts[-1]} records")
    self.labels = labels

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f"{self.name}: index {i} out of range for {len(self)} records")
    part = int(np.searchsorted(self._starts, i, side="right")) - 1
    record = self._parts[part][i - int(self._starts[part])]
    origin = record.get("file_name", record.get("id", b""))
    origin = origin.decode() if isinstance(origin, bytes) else str(origin)
    name = f"{self.name} record {i} ({origin})"
    return {"image": images.decode_rgb(record["image"], name), "label": self.labels[i]}


def _read_labels(parts: Sequence, key: str, chunk: int = 1024) -> np.ndarray:
  """The `key` feature of every record of `parts`, in order; images are not decoded."""
  values = []
  for part in parts:
    for start in range(0, len(part), chunk):
      keys = list(range(start, min(start + chunk, len(part))))
      values += [record[key] for record in part.__getitems__(keys)]
  return np.asarray(values, np.int32)


def _cached_labels(builder, parts: Sequence, key: str) -> np.ndarray:
  """`_read_labels`, cached in the prepared dataset's folder when it is writable."""
  path = os.path.join(os.fspath(builder.data_path), _LABEL_CACHE)
  if os.path.exists(path):
    labels = np.load(path)
    if len(labels) == sum(len(p) for p in parts):
      return labels
  labels = _read_labels(parts, key)
  try:
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, labels)
    os.replace(tmp, path)
  except OSError:
    pass  # A read-only data dir: labels are read again next time.
  return labels


def top_concepts(labels_NxC: np.ndarray, k: int) -> np.ndarray:
  """Columns of the k most frequent concepts, most frequent first (ties: lower column first).

  k <= 0 keeps every column.
  """
  if k <= 0:
    return np.arange(labels_NxC.shape[1])
  if k > labels_NxC.shape[1]:
    raise errors.UserError(
        f"top_concepts={k} but the labels have only {labels_NxC.shape[1]} concepts")
  return np.argsort(-labels_NxC.sum(0), kind="stable")[:k]


def prepare_tfds(data_config: ml_collections.ConfigDict
                 ) -> Tuple[object, Tuple[str, ...], str, Dict[str, str]]:
  """Prepares the tfds dataset `data_config.name` if needed
  -> (builder, splits, label key, the source it was prepared from {"fingerprint", "origin"}).

  Process 0 prepares first (download or manual directory); the other processes wait for it and
  then prepare only if they cannot see its result (a host-local data_dir). Data prepared before
  are used only if they come from the source the config names (`ManualDirBuilder.check_source`).
  """
  builder_cls, splits, key = _TFDS[data_config.name]
  builder = builder_cls(data_dir=data_config.get("data_dir") or None,
                        manual_dir=data_config.get("manual_dir") or None,
                        skip_corrupt=bool(data_config.get("skip_corrupt", False)),
                        file_format="array_record")
  prepared_here = False
  if jax.process_index() == 0 and not builder.is_prepared():
    builder.download_and_prepare()
    prepared_here = True
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"ucsh_jax.data: {builder.name} prepared")
    if not builder.is_prepared():
      builder.download_and_prepare()
      prepared_here = True
  source = builder.recorded_source() if prepared_here else builder.check_source()
  return builder, splits, key, source


def get_source(data_config: ml_collections.ConfigDict) -> Source:
  """The dataset that `data_config` (config.data) names; tfds datasets are prepared if needed.

  name: 'digits' (bundled, no download), 'cifar10', 'nus_wide' (labels: the `top_concepts` most
  frequent concepts), 'mirflickr' (24 labels), 'image_folder' or 'features' (both from `path`).
  """
  name = data_config.name
  if name == "digits":
    source = digits.DigitsSource()
    source.fingerprint = fingerprint_lib.of_arrays(source.images_Nx8x8x3, source.labels)
  elif name == "image_folder":
    source = folders.ImageFolderSource(data_config.path,
                                       skip_corrupt=bool(data_config.get("skip_corrupt", False)))
    source.fingerprint = fingerprint_lib.of_files(data_config.path, source.paths)
  elif name == "features":
    source = features.FeatureSource(data_config.path)
    source.fingerprint = fingerprint_lib.of_file(data_config.path)
  elif name in _TFDS:
    builder, splits, key, prepared_from = prepare_tfds(data_config)
    parts = tfds.data_source(builder.name, split=list(splits), data_dir=builder.data_dir_root,
                             download=False, decoders={"image": tfds.decode.SkipDecoding()})
    labels = _cached_labels(builder, parts, key)
    if name == "nus_wide":
      labels = labels[:, top_concepts(labels, int(data_config.get("top_concepts", 10)))]
    source = TfdsSource(builder.name, parts, labels)
    source.fingerprint = prepared_from["fingerprint"]
    source.origin = prepared_from["origin"]
  else:
    raise errors.UserError(f"unknown data.name {name!r}; expected one of {NAMES}")
  return source
