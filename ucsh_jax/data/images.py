"""Image files and bytes to uint8 RGB arrays, with errors that name the file."""

from typing import Iterable, Iterator, Optional

import concurrent.futures
import io
import itertools

import numpy as np
import PIL.Image

from ucsh_jax import errors

# What PIL raises for unreadable or truncated data (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, PIL.Image.DecompressionBombError)


class CorruptImageError(errors.UserError):
  """An image file or record that cannot be read or decoded; the message names it."""


def decode_rgb(data: bytes, name: str) -> np.ndarray:
  """Encoded image bytes (any format PIL reads) -> uint8 RGB (H, W, 3).

  Gray, palette, CMYK and alpha images are converted to RGB. `name` (a file or record) is named
  in the CorruptImageError raised for bytes that do not decode.
  """
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"))
  except _DECODE_ERRORS as e:
    raise CorruptImageError(f"cannot decode image {name}: {type(e).__name__}: {e}") from e


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

