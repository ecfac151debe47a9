"""Thumbnails of a data set's items, for the search page and the report's gallery.

  thumbnails.has_pixels(source)            # False for feature files
  thumbnails.thumbnail(source, i, size=96) # PIL RGB image, longest side `size`
  thumbnails.png_bytes(image)              # what a web page or a report embeds

Image folders are read from their files (`source.paths`, JPEGs decoded at reduced size);
array sources (the 8x8 digits, tfds records) are rendered from `source[i]["image"]`. Small
images are enlarged with nearest-neighbour sampling so that their pixels stay sharp.
"""

import io

import numpy as np
import PIL.Image
import PIL.ImageOps

from ucsh_jax.data import images

DEFAULT_SIZE = 96


class NoPixelsError(ValueError):
  """The data set holds feature vectors, not images: there is nothing to draw."""


def has_pixels(source) -> bool:
  """Whether the items of `source` are images (a thumbnail can be drawn)."""
  return getattr(source, "kind", None) == "image"


def fit(image: PIL.Image.Image, size: int) -> PIL.Image.Image:
  """`image` scaled (aspect kept) so that its longest side is `size`, as RGB (converted by the
  rules of `images.to_rgb`, like the images that are hashed).

  Enlarging uses nearest-neighbour sampling (whole pixels as blocks), shrinking a box filter.
  """
  if size < 1:
    raise ValueError(f"thumbnail size must be at least 1, got {size}")
  width, height = image.size
  scale = size / max(width, height)
  target = (max(1, round(width * scale)), max(1, round(height * scale)))
  resample = PIL.Image.Resampling.NEAREST if scale > 1 else PIL.Image.Resampling.BOX
  return PIL.Image.fromarray(images.to_rgb(image)).resize(target, resample)


def from_array(image_HxWx3: np.ndarray, size: int = DEFAULT_SIZE) -> PIL.Image.Image:
  """uint8 RGB (H, W, 3) -> RGB thumbnail with longest side `size`."""
  array = np.asarray(image_HxWx3)
  if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
    raise ValueError(f"expected a uint8 (H, W, 3) image, got {array.dtype} {array.shape}")
  return fit(PIL.Image.fromarray(array), size)


def from_file(path: str, size: int = DEFAULT_SIZE) -> PIL.Image.Image:
  """An image file -> RGB thumbnail with longest side `size`, upright by its EXIF orientation.

  JPEGs are decoded at the smallest scale that still covers `size` (PIL's draft mode).
  Raises CorruptImageError naming a file that cannot be read or decoded.
  """
  data = images.read_file(path)
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.draft("RGB", (size, size))
      return fit(PIL.ImageOps.exif_transpose(image), size)
  except images.DECODE_ERRORS as e:
    raise images.decode_error(path, data, e) from e


def thumbnail(source, i: int, size: int = DEFAULT_SIZE) -> PIL.Image.Image:
  """Item `i` of `source` as an RGB thumbnail with longest side `size`.

  Raises NoPixelsError for a feature source and IndexError for `i` outside [0, len(source)).
  """
  if not has_pixels(source):
    raise NoPixelsError("this data set holds feature vectors, not images: no thumbnail to draw")
  i = int(i)
  if not 0 <= i < len(source):
    raise IndexError(f"item {i} is out of range for a data set of {len(source)} items")
  paths = getattr(source, "paths", None)
  if paths is not None:
    return from_file(paths[i], size)
  return from_array(source[i]["image"], size)


def png_bytes(image: PIL.Image.Image) -> bytes:
  """A PIL image as PNG bytes."""
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()
