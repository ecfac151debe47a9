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


def _encoded(image, fmt="PNG"):
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def _composited_on_white(rgb, alpha):
  """The expected pixels, in floating point: alpha a / 255 of the colour over white."""
  a = alpha.astype(np.float64)[..., None] / 255
  return np.round(a * rgb + (1 - a) * 255).astype(np.uint8)


def _mode_cases():
  """(name, encoded bytes of an image PIL opens in that mode, the RGB pixels expected, computed
  here with NumPy from the image's own values)."""
  rng = np.random.default_rng(0)
  bits = rng.random((6, 7)) < 0.5
  gray = rng.integers(0, 256, (6, 7), dtype=np.uint8)
  deep = np.concatenate([np.array([0, 128, 129, 256, 257, 385, 386, 65407, 65408, 65535]),
                         rng.integers(0, 65536, 32)]).astype(np.uint16).reshape(6, 7)
  palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
  index = rng.integers(0, 256, (6, 7), dtype=np.uint8)
  index[0, :3] = 5  # The transparent entry, below.
  rgba = rng.integers(0, 256, (6, 7, 4), dtype=np.uint8)
  rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
  cmyk = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
  cmyk[0, :4] = [[0, 0, 0, 0], [255, 255, 255, 255], [255, 0, 0, 0], [0, 0, 0, 255]]

  def paletted(transparent=None):
    image = PIL.Image.fromarray(index, "P")
    image.putpalette(palette.reshape(-1).tolist())
    if transparent is not None:
      image.info["transparency"] = transparent
    return image

  looked_up = palette[index]
  see_through = looked_up.copy()
  see_through[index == 5] = 255
  c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
  return [
      ("1", _encoded(PIL.Image.fromarray(bits)), np.repeat(bits[..., None] * 255, 3, 2)),
      ("L", _encoded(PIL.Image.fromarray(gray)), np.repeat(gray[..., None], 3, 2)),
      ("I;16", _encoded(PIL.Image.fromarray(deep)),
       np.repeat(np.round(deep.astype(np.float64) * 255 / 65535)[..., None], 3, 2)),
      ("P", _encoded(paletted()), looked_up),
      ("P", _encoded(paletted(transparent=5)), see_through),
      ("RGBA", _encoded(PIL.Image.fromarray(rgba, "RGBA")),
       _composited_on_white(rgba[..., :3], rgba[..., 3])),
      ("LA", _encoded(PIL.Image.fromarray(rgba[..., [0, 3]], "LA")),
       _composited_on_white(np.repeat(rgba[..., :1], 3, 2), rgba[..., 3])),
      ("CMYK", _encoded(PIL.Image.fromarray(cmyk, "CMYK"), "TIFF"),
       np.round(np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k),
                          (255 - y) * (255 - k)], -1) / 255)),
  ]


@pytest.mark.parametrize("mode, data, expected", _mode_cases(),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(_mode_cases())])
def test_every_mode_becomes_the_rgb_its_rule_says(mode, data, expected):
  """16-bit gray scaled to 8 bits (not clipped), transparency composited onto white, the
  other modes as PIL converts them: each against NumPy."""
  with PIL.Image.open(io.BytesIO(data)) as image:
    assert image.mode == mode  # The file is read in the mode the case is about.
  got = images.decode_rgb(data, "x.png")
  assert got.dtype == np.uint8 and got.shape == expected.shape
  np.testing.assert_array_equal(got, expected.astype(np.uint8))
