"""tfds builder for NUS-WIDE from its files in the manual directory, prepared without TensorFlow.

Two layouts are read (NUS-WIDE cannot be downloaded automatically):
- official: `ImageList/Imagelist.txt` (one image path per line, Windows separators, e.g.
  `C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg` or `actor\\0001_2124494179.jpg`) and
  `Groundtruth/AllLabels/Labels_<concept>.txt` (one 0/1 line per image, same order; concepts in
  sorted file-name order);
- list: `nus_wide_list.txt` with `<relative image path> <c 0/1 values>` per line.
Image paths are found under the manual directory, or its `Flickr/` or `images/` folder, dropping
leading path parts (e.g. `C:/ImageData/`) as needed; the first image that exists fixes the rule.
The stored record keeps the original JPEG bytes and every concept (labels uint8 (c,)); the top-k
concept selection happens when reading (`sources.py`). The prepared data record the fingerprint
of the list and label files' bytes and of the images' paths and sizes.
"""

from typing import Dict, List, Sequence, Tuple

import os

import numpy as np
import tensorflow_datasets as tfds

from ucsh_jax import errors
from ucsh_jax import progress
from ucsh_jax.data import fingerprint
from ucsh_jax.data import tfds_builder

IMAGE_LIST = "ImageList/Imagelist.txt"
LABELS_DIR = "Groundtruth/AllLabels"
LIST_FILE = "nus_wide_list.txt"
_IMAGE_ROOTS = ("", "Flickr", "images")


def _path_parts(line: str) -> List[str]:
  path = line.strip().replace("\\", "/")
  if len(path) > 1 and path[1] == ":":  # Drive letter.
    path = path[2:]
  return [p for p in path.split("/") if p]


def resolve_paths(manual_dir: str, entries: Sequence[List[str]], listing: str) -> List[str]:
  """Path parts of each listed image -> file paths, with the rule the first existing image fixes."""
  for parts in entries:
    for root in _IMAGE_ROOTS:
      for drop in range(len(parts)):
        if os.path.isfile(os.path.join(manual_dir, root, *parts[drop:])):
          return [os.path.join(manual_dir, root, *p[drop:]) for p in entries]
  raise errors.UserError(
      f"ucsh_nus_wide: none of the {len(entries)} images listed in {listing} exists under "
      f"{manual_dir} (tried the folders {', '.join(repr(r) for r in _IMAGE_ROOTS)}); e.g. "
      f"{'/'.join(entries[0]) if entries else 'no entries'}. Put the NUS-WIDE images there.")


def _read_01(values: Sequence[str], where: str) -> np.ndarray:
  """'0'/'1' strings -> uint8; ValueError naming `where` and the first other value."""
  text = np.asarray(values)
  bad = np.flatnonzero((text != "0") & (text != "1"))
  if bad.size:
    raise errors.UserError(f"{where}: value {bad[0] + 1} is {text[bad[0]]!r}; expected 0 or 1")
  return (text == "1").astype(np.uint8)


def read_official(manual_dir: str) -> Tuple[List[str], np.ndarray]:
  """-> (image paths (n), labels uint8 (n, c)) from the official layout; concepts in name order."""
  listing = os.path.join(manual_dir, IMAGE_LIST)
  with open(listing) as f:
    entries = [_path_parts(line) for line in f if line.strip()]
  label_dir = os.path.join(manual_dir, LABELS_DIR)
  names = sorted(f for f in (os.listdir(label_dir) if os.path.isdir(label_dir) else [])
                 if f.startswith("Labels_") and f.endswith(".txt"))
  if not names:
    raise errors.UserError(
        f"ucsh_nus_wide: no Labels_<concept>.txt files in {label_dir}; put the NUS-WIDE "
        "Groundtruth/AllLabels folder there.")
  columns = []
  for name in names:
    path = os.path.join(label_dir, name)
    with open(path) as f:
      values = [line.strip() for line in f if line.strip()]
    if len(values) != len(entries):
      raise errors.UserError(
          f"{path} has {len(values)} lines but {listing} lists {len(entries)} images")
    columns.append(_read_01(values, f"{path} (value k is line k)"))
  paths = resolve_paths(manual_dir, entries, listing)
  return paths, np.stack(columns, axis=1)


def read_list(manual_dir: str) -> Tuple[List[str], np.ndarray]:
  """-> (image paths (n), labels uint8 (n, c)) from `nus_wide_list.txt`."""
  listing = os.path.join(manual_dir, LIST_FILE)
  entries, rows = [], []
  with open(listing) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      path, *values = line.split()
      if rows and len(values) != len(rows[0]):
        raise errors.UserError(
            f"{listing}: line {number} has {len(values)} label values, line 1 has "
            f"{len(rows[0])}")
      entries.append(_path_parts(path))
      rows.append(_read_01(values, f"{listing} line {number} (value k is label k)"))
  if not rows or not len(rows[0]):
    raise errors.UserError(f"{listing}: expected lines '<image path> <0/1 values>'")
  paths = resolve_paths(manual_dir, entries, listing)
  return paths, np.stack(rows)


class UcshNusWide(tfds_builder.ManualDirBuilder):
  """NUS-WIDE (269,648 Flickr images, 81 concepts); features image/labels/file_name."""

  name = "ucsh_nus_wide"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Put {IMAGE_LIST}, {LABELS_DIR}/Labels_<concept>.txt and the images (e.g. Flickr/<concept>/"
      f"*.jpg) in the manual directory, or the images with a {LIST_FILE} of lines "
      "'<relative image path> <0/1 per concept>'.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="NUS-WIDE multi-label images; labels is multi-hot over every concept.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "labels": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
            "file_name": tfds.features.Text(),
        }),
        homepage="https://lms.comp.nus.edu.sg/research/NUS-WIDE.html",
        disable_shuffling=True)  # Records stay in list order.

  def _read(self) -> Tuple[List[str], np.ndarray, Dict[str, str]]:
    """-> (image paths (n), labels uint8 (n, c), the source's {"fingerprint", "origin"})."""
    manual = os.fspath(self.manual_path)
    if os.path.isfile(os.path.join(manual, IMAGE_LIST)):
      paths, labels = read_official(manual)
      label_dir = os.path.join(manual, LABELS_DIR)
      listings = [os.path.join(manual, IMAGE_LIST)] + [
          os.path.join(label_dir, f) for f in sorted(os.listdir(label_dir))
          if f.startswith("Labels_") and f.endswith(".txt")]
    elif os.path.isfile(os.path.join(manual, LIST_FILE)):
      paths, labels = read_list(manual)
      listings = [os.path.join(manual, LIST_FILE)]
    else:
      raise errors.UserError(
          f"{self.name}: neither {IMAGE_LIST} nor {LIST_FILE} is in the manual directory {manual}. "
          + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return paths, labels, {"fingerprint": fingerprint.of_files(manual, paths, content=listings),
                           "origin": manual}

  def current_source(self):
    """The manual directory's files; None where it holds no list file."""
    manual = os.fspath(self.manual_path)
    if not any(os.path.isfile(os.path.join(manual, f)) for f in (IMAGE_LIST, LIST_FILE)):
      return None
    return self._read()[2]

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from the manual directory.
    paths, labels, source = self._read()
    self._record_source(source)
    manual = os.fspath(self.manual_path)
    names = [os.path.relpath(path, manual) for path in paths]
    examples = self._generate_examples(paths, labels, names)
    return {"train": progress.iterate(examples, f"{self.name}: preparing", len(paths))}
