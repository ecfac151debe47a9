"""An image folder `root/<class>/**/*.jpg|png|...` as a single-label dataset."""

from typing import List

import os

from absl import logging
import numpy as np

from ucsh_jax import errors
from ucsh_jax.data import images

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")


class ImageFolderSource:
  """Images under `root/<class>/` (searched recursively), labelled by class folder.

  Classes are the sorted sub-folder names (`class_names`), label = position in that list; files are
  in sorted path order. With `skip_corrupt` every image is decoded once here and unreadable ones
  are left out (and counted in the log); otherwise reading one raises CorruptImageError naming it.
  `source[i]` is {"image": uint8 (H, W, 3) RGB, "label": int32 ()}.
  """

  kind = "image"

  def __init__(self, root: str, *, skip_corrupt: bool = False):
    if not os.path.isdir(root):
      raise errors.UserError(f"image folder {root!r} does not exist (data.path)")
    self.class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths: List[str] = []
    labels: List[int] = []
    empty = []
    for label, name in enumerate(self.class_names):
      count = len(paths)
      for folder, subfolders, files in os.walk(os.path.join(root, name)):
        subfolders.sort()
        found = sorted(f for f in files if f.lower().endswith(EXTENSIONS))
        paths += [os.path.join(folder, f) for f in found]
        labels += [label] * len(found)
      if len(paths) == count:
        empty.append(os.path.join(root, name))
    if not paths:
      raise errors.UserError(
          f"no images ({', '.join(EXTENSIONS)}) in class folders {root}/<class>/ (data.path)")
    if empty:
      raise errors.UserError(f"class folder {empty[0]} holds no images ({', '.join(EXTENSIONS)})"
                             + (f"; {len(empty) - 1} more empty" if len(empty) > 1 else ""),
                             hint="remove the empty class folder or put its images in it")
    if skip_corrupt:
      ok = [data is not None for data in images.read_checked_many(paths, skip_corrupt=True)]
      skipped = [p for p, good in zip(paths, ok) if not good]
      if skipped:
        logging.warning("image folder %s: skipped %d unreadable image(s) (data.skip_corrupt=True), "
                        "e.g. %s", root, len(skipped), ", ".join(skipped[:5]))
      paths = [p for p, good in zip(paths, ok) if good]
      labels = [label for label, good in zip(labels, ok) if good]
    self.paths = paths
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict:
    return {"image": images.decode_rgb(images.read_file(self.paths[i]), self.paths[i]),
            "label": self.labels[i]}

