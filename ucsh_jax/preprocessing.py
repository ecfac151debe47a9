"""How raw uint8 RGB pixels become network inputs; chosen by the pretrained weights."""

from typing import Tuple

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Pixel normalisation that a set of weights was trained with.

  `apply` maps uint8 RGB images (..., H, W, 3) to float32:
    x = pixels / 255 * pixel_range            (pixel_range 1.0 -> [0, 1]; 255.0 -> [0, 255])
    x = x[..., ::-1] if channel_order == "BGR"
    x = (x - mean) / std                      (mean and std in the final channel order)
  """

  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  channel_order: str = "RGB"
  pixel_range: float = 1.0

  def __post_init__(self):
    if self.channel_order not in ("RGB", "BGR"):
      raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
    if len(self.mean) != 3 or len(self.std) != 3:
      raise ValueError(f"mean and std need 3 values each, got {self.mean} and {self.std}")

  def apply(self, images_uint8: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> normalised float32 of the same shape."""
    x = np.asarray(images_uint8, np.float32) * np.float32(self.pixel_range / 255.0)
    if self.channel_order == "BGR":
      x = x[..., ::-1]
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


# torchvision and timm VGG16: RGB in [0, 1], ImageNet mean and std.
IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# Plain pixels in [0, 1]: for inputs hashed without a backbone (zero stays zero, so cosine
# similarities of images on a black background are not swamped by a shared offset).
UNIT = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# Keras (Caffe) VGG16: BGR in [0, 255] minus the Caffe channel means.
CAFFE = Preprocessing(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0),
                      channel_order="BGR", pixel_range=255.0)
