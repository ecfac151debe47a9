"""Image files and bytes to uint8 RGB arrays, with errors that name the file."""

from typing import Iterable, Iterator, Optional, Tuple

import concurrent.futures
import io
import itertools
import warnings

import numpy as np
import PIL.Image

from ucsh_jax import errors

# The most pixels a query image (a file given to `search`, an upload to `serve`) may have, read
# from its header before it is decoded: about 7,700 x 5,200, more than a camera's image and far
# from a decompression bomb. Larger ones are refused with TooManyPixelsError.
MAX_QUERY_PIXELS = 40_000_000
# What PIL raises for unreadable, truncated or oversized data (UnidentifiedImageError is an
# OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError)


class CorruptImageError(errors.UserError):
  """An image file or record that cannot be read or decoded; the message names it."""


class TooManyPixelsError(CorruptImageError):
  """An image with more pixels than accepted, refused from its header before decoding."""


def too_many_pixels(name: str, max_pixels: int, size: Optional[Tuple[int, int]] = None) -> str:
  """The one message for an image over the pixel limit (`size`: (width, height) when known)."""
  shape = f" ({size[0]} x {size[1]})" if size else ""
  return f"{name} is too large: more than the {max_pixels:,} pixels accepted{shape}"


def decode_error(name: str, data: bytes, error: Exception,
                 max_pixels: Optional[int] = None) -> CorruptImageError:
  """The error to raise for `error`, what PIL raised decoding `data` (the bytes of `name`), in
  words: PIL's own text names an anonymous buffer. `max_pixels` as in `decode_rgb`."""
  if isinstance(error, PIL.Image.DecompressionBombError):  # Refused by PIL.Image.open.
    pil_limit = 2 * PIL.Image.MAX_IMAGE_PIXELS
    return TooManyPixelsError(too_many_pixels(name, min(pil_limit, max_pixels or pil_limit)))
  if not data:
    reason = "the file is empty"
  elif isinstance(error, PIL.UnidentifiedImageError):
    reason = "its bytes are in no image format that can be read (JPEG, PNG, GIF, TIFF...)"
  else:
    reason = f"the image data is cut short or damaged ({error})"
  return CorruptImageError(f"{name} is not a readable image: {reason}")


# Image modes of 16-bit gray values (PIL opens a 16-bit gray PNG or TIFF as "I;16"); "I" (32-bit
# integers, what older PIL made of them) is read the same way, its values clipped to 0..65535.
GRAY_16_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes with an alpha channel ("transparency" in an image's info is the other way to have one).
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What transparent pixels are composited onto.
BACKGROUND = 255


def to_rgb(image: PIL.Image.Image) -> np.ndarray:
  """A decoded image of any mode -> uint8 RGB (H, W, 3), by these rules:

  - 16-bit gray (GRAY_16_BIT_MODES): each value v is scaled, not clipped, to round(v / 257)
    (65535 -> 255), the same in the three channels;
  - transparency (an alpha channel: ALPHA_MODES, or a transparent colour or palette entry:
    "transparency" in the image's info): composited onto white, each channel c with alpha a
    (0..255) becoming round((a c + (255 - a) 255) / 255), so a transparent pixel is white;
  - every other mode as PIL converts it to RGB: gray ("1", "L") repeated in the three
    channels, a palette ("P") looked up, CMYK as round((255 - C)(255 - K) / 255) for R (and
    M, Y for G, B).
  """
  transparency = image.info.get("transparency")
  if image.mode in GRAY_16_BIT_MODES:
    values = np.asarray(image).astype(np.int64)
    gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)  # round(v / 257)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    if not isinstance(transparency, int):
      return rgb
    alpha = np.where(values == transparency, 0, 255)
  elif image.mode in ALPHA_MODES or transparency is not None:
    rgba = np.asarray(image.convert("RGBA"))
    rgb, alpha = rgba[:, :, :3], rgba[:, :, 3]
  else:
    return np.asarray(image.convert("RGB"))
  alpha = alpha.astype(np.int64)[:, :, None]
  blended = (rgb.astype(np.int64) * alpha + BACKGROUND * (255 - alpha) + 127) // 255
  return blended.astype(np.uint8)


def decode_rgb(data: bytes, name: str, max_pixels: Optional[int] = None) -> np.ndarray:
  """Encoded image bytes (any format PIL reads) -> uint8 RGB (H, W, 3).

  Every mode is converted to RGB by the rules of `to_rgb` (16-bit gray scaled to 8 bits,
  transparency composited onto white). `name` (a file or record) is named
  in the CorruptImageError raised for bytes that do not decode, and in the TooManyPixelsError
  for an image of more than `max_pixels` pixels (None: PIL's own limit, twice
  PIL.Image.MAX_IMAGE_PIXELS).
  """
  try:
    with warnings.catch_warnings():
      if max_pixels is not None:  # PIL's warning above its own limit would be a second message.
        warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
      image = PIL.Image.open(io.BytesIO(data))
    with image:
      width, height = image.size
      if max_pixels is not None and width * height > max_pixels:
        raise TooManyPixelsError(too_many_pixels(name, max_pixels, (width, height)))
      return to_rgb(image)
  except TooManyPixelsError:  # A ValueError, like some of PIL's decode errors.
    raise
  except DECODE_ERRORS as e:
    raise decode_error(name, data, e, max_pixels) from e


def encode_png(image_HxWx3: np.ndarray) -> bytes:
  """uint8 RGB (H, W, 3) -> lossless PNG bytes (what tfds stores without TensorFlow)."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(np.asarray(image_HxWx3, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def resize(image_HxWx3: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (size, size, 3), bilinear; the aspect ratio is not kept."""
  if image_HxWx3.shape[:2] == (size, size):
    return image_HxWx3
  image = PIL.Image.fromarray(image_HxWx3).resize((size, size), PIL.Image.Resampling.BILINEAR)
  return np.asarray(image)


def read_file(path: str) -> bytes:
  """The bytes of an image file; CorruptImageError names a missing or unreadable file."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise CorruptImageError(f"cannot read image file {path}: {e}") from e


def read_checked(path: str) -> bytes:
  """Reads an image file and decodes it fully once; CorruptImageError names an unreadable file."""
  data = read_file(path)
  decode_rgb(data, path)
  return data


def read_checked_many(paths: Iterable[str], *, skip_corrupt: bool,
                      num_threads: int = 8) -> Iterator[Optional[bytes]]:
  """`read_checked` over `paths` in order, decoding on threads.

  Yields the bytes of each file, or None for an unreadable one when `skip_corrupt`; without it the
  first unreadable file raises CorruptImageError.
  """
  def read(path):
    try:
      return read_checked(path)
    except CorruptImageError:
      if skip_corrupt:
        return None
      raise

  paths = iter(paths)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    while chunk := list(itertools.islice(paths, 32 * num_threads)):  # Bounded memory.
      yield from pool.map(read, chunk)

