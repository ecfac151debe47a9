"""Image bytes that cannot be decoded, or have too many pixels: one message in words each."""

import io
import struct
import warnings
import zlib

import numpy as np
import PIL.Image
import pytest

from ucsh_jax.data import images


def _png_header(width, height):
  """A valid PNG signature and header announcing width x height pixels, with no pixel data."""
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
          + chunk(b"IEND", b""))


def _cut_jpeg():
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  PIL.Image.fromarray(noise).save(buffer, format="JPEG")
  return buffer.getvalue()[:len(buffer.getvalue()) // 2]


@pytest.mark.parametrize("data, message", [
    (b"", "x.jpg is not a readable image: the file is empty"),
    (b"%PDF-1.4", "x.jpg is not a readable image: its bytes are in no image format that can be "
                  "read (JPEG, PNG, GIF, TIFF...)"),
    (_cut_jpeg(), "x.jpg is not a readable image: the image data is cut short or damaged "
                  "(image file is truncated"),
])
def test_undecodable_bytes_are_named_and_said_in_words(data, message):
  with pytest.raises(images.CorruptImageError) as raised:
    images.decode_rgb(data, "x.jpg", images.MAX_QUERY_PIXELS)
  assert str(raised.value).startswith(message), str(raised.value)
  assert "object at 0x" not in str(raised.value)  # PIL's own text names its anonymous buffer.
  assert not isinstance(raised.value, images.TooManyPixelsError)


@pytest.mark.parametrize("width, height, shape", [
    (8000, 6000, " (8000 x 6000)"),       # Under PIL's own limit.
    (10_000, 10_000, " (10000 x 10000)"),  # Where PIL warns.
    (100_000, 100_000, ""),               # Where PIL refuses (its text says 178956970).
])
def test_one_pixel_limit_and_one_message_for_query_images(width, height, shape):
  with warnings.catch_warnings(record=True) as shown:  # The filters in force, recorded.
    with pytest.raises(images.TooManyPixelsError) as raised:
      images.decode_rgb(_png_header(width, height), "big.png", images.MAX_QUERY_PIXELS)
  assert not shown, [str(w.message) for w in shown]  # Nothing besides the one error.
  assert str(raised.value) == (
      f"big.png is too large: more than the 40,000,000 pixels accepted{shape}")


def test_the_limit_is_the_last_size_accepted():
  pixels = np.zeros((30, 40, 3), np.uint8)
  buffer = io.BytesIO()
  PIL.Image.fromarray(pixels).save(buffer, format="PNG")
  np.testing.assert_array_equal(images.decode_rgb(buffer.getvalue(), "ok.png", 1200), pixels)
  with pytest.raises(images.TooManyPixelsError, match=r"1,199 pixels accepted \(40 x 30\)"):
    images.decode_rgb(buffer.getvalue(), "ok.png", 1199)
