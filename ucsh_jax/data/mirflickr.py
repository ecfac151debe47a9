"""tfds builder for MIRFLICKR-25K from its files in the manual directory (no TensorFlow needed).

Layout (MIRFLICKR-25K cannot be downloaded automatically): `mirflickr/im1.jpg .. im25000.jpg` and
the annotation files of `mirflickr25k_annotations_v080.zip`, one per label (`animals.txt`,
`baby.txt`, ...), each listing 1-based image numbers, one per line. The annotation files are looked
for in `annotations/`, `mirflickr25k_annotations_v080/` or the manual directory itself. The 24
"potential" labels are used; the `*_r1.txt` files ("relevant" subsets) are not separate labels.
Records keep the original JPEG bytes, in image-number order. The prepared data record the
fingerprint of the annotation files' bytes and of the images' paths and sizes.
"""

from typing import Dict, List, Tuple

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from ucsh_jax import errors
from ucsh_jax import progress
from ucsh_jax.data import fingerprint
from ucsh_jax.data import tfds_builder

IMAGE_DIR = "mirflickr"
ANNOTATION_DIRS = ("annotations", "mirflickr25k_annotations_v080", "")
LABELS = ("animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
          "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
          "structures", "sunset", "transport", "tree", "water")


def read_layout(manual_dir: str) -> Tuple[List[str], np.ndarray, List[str]]:
  """-> (image paths im1.jpg .. im<n>.jpg (n), labels uint8 (n, 24), the 24 annotation files).

  n is the largest image number among the image files and the annotation files, so an image that
  is annotated but absent shows up as an unreadable file. Raises FileNotFoundError naming a missing
  annotation file and where it goes, ValueError for a line that is not an image number.
  """
  image_dir = os.path.join(manual_dir, IMAGE_DIR)
  if not os.path.isdir(image_dir):
    raise errors.UserError(
        f"ucsh_mirflickr: missing folder {image_dir}; put the images mirflickr/im1.jpg .. "
        "im25000.jpg of mirflickr25k.zip there.")
  numbers = [int(m.group(1)) for f in os.listdir(image_dir)
             if (m := re.fullmatch(r"im(\d+)\.jpg", f))]
  annotation_dir = next((os.path.join(manual_dir, d) for d in ANNOTATION_DIRS
                         if os.path.isfile(os.path.join(manual_dir, d, f"{LABELS[0]}.txt"))), None)
  annotated, annotation_files = [], []
  for label in LABELS:
    path = os.path.join(annotation_dir or os.path.join(manual_dir, ANNOTATION_DIRS[0]),
                        f"{label}.txt")
    annotation_files.append(path)
    if not os.path.isfile(path):
      raise errors.UserError(
          f"ucsh_mirflickr: missing annotation file {path}; put the 24 label files of "
          f"mirflickr25k_annotations_v080.zip ({', '.join(l + '.txt' for l in LABELS[:3])}, ...) "
          f"in {os.path.join(manual_dir, ANNOTATION_DIRS[0])}.")
    with open(path) as f:
      lines = [(k, line.strip()) for k, line in enumerate(f, 1) if line.strip()]
    bad = [(k, line) for k, line in lines if not line.isdigit() or int(line) < 1]
    if bad:
      raise errors.UserError(
          f"{path}: line {bad[0][0]} is {bad[0][1]!r}, not a 1-based image number")
    annotated.append(np.asarray([int(line) for _, line in lines], np.int64))
  n = max(numbers + [int(a.max()) for a in annotated if len(a)], default=0)
  if n == 0:
    raise errors.UserError(f"ucsh_mirflickr: no im<number>.jpg files in {image_dir}")
  labels = np.zeros((n, len(LABELS)), np.uint8)
  for j, numbers_j in enumerate(annotated):
    labels[numbers_j - 1, j] = 1
  return [os.path.join(image_dir, f"im{i}.jpg") for i in range(1, n + 1)], labels, annotation_files


class UcshMirflickr(tfds_builder.ManualDirBuilder):
  """MIRFLICKR-25K (25,000 Flickr images, 24 labels); features image/labels/file_name."""

  name = "ucsh_mirflickr"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Unzip mirflickr25k.zip (folder mirflickr/ with im1.jpg .. im25000.jpg) and "
      "mirflickr25k_annotations_v080.zip (animals.txt, baby.txt, ...; into annotations/) in the "
      "manual directory.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="MIRFLICKR-25K multi-label images; labels is multi-hot over the 24 labels.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "labels": tfds.features.Tensor(shape=(len(LABELS),), dtype=np.uint8),
            "file_name": tfds.features.Text(),
        }),
        homepage="https://press.liacs.nl/mirflickr/",
        disable_shuffling=True)  # Records stay in image-number order.

  def _read(self) -> Tuple[List[str], np.ndarray, Dict[str, str]]:
    """-> (image paths (n), labels uint8 (n, 24), the source's {"fingerprint", "origin"})."""
    if not self.manual_path.exists():
      raise errors.UserError(f"{self.name}: the manual directory {self.manual_path} does not "
                              f"exist. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    manual = os.fspath(self.manual_path)
    paths, labels, annotation_files = read_layout(manual)
    return paths, labels, {
        "fingerprint": fingerprint.of_files(manual, paths, content=annotation_files),
        "origin": manual}

  def current_source(self):
    """The manual directory's files; None where it has no mirflickr/ folder."""
    if not os.path.isdir(os.path.join(os.fspath(self.manual_path), IMAGE_DIR)):
      return None
    return self._read()[2]

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from the manual directory.
    paths, labels, source = self._read()
    self._record_source(source)
    names = [f"{IMAGE_DIR}/{os.path.basename(path)}" for path in paths]
    examples = self._generate_examples(paths, labels, names)
    return {"train": progress.iterate(examples, f"{self.name}: preparing", len(paths))}
