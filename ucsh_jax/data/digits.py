"""scikit-learn's bundled handwritten digits as a small RGB image dataset (no download)."""

import numpy as np
from sklearn import datasets


class DigitsSource:
  """1,797 real 8x8 digit images, 10 classes.

  `load_digits` values 0..16 are scaled to 0..255 (round(v * 255 / 16)) and the gray level is
  replicated to 3 channels: `source[i]["image"]` is uint8 (8, 8, 3); the pipeline resizes it.
  """

  kind = "image"

  def __init__(self):
    digits = datasets.load_digits()
    gray_Nx8x8 = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    self.images_Nx8x8x3 = np.repeat(gray_Nx8x8[..., None], 3, axis=-1)
    self.labels = digits.target.astype(np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"image": self.images_Nx8x8x3[i], "label": self.labels[i]}
