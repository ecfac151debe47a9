"""Thumbnails from image files, from arrays (the digits) and none for feature files."""

import io

import numpy as np
import PIL.Image
import pytest

from ucsh_jax import thumbnails
from ucsh_jax.data import digits
from ucsh_jax.data import features
from ucsh_jax.data import folders
from ucsh_jax.data import images


def test_digit_is_enlarged_in_whole_pixel_blocks():
  source = digits.DigitsSource()
  thumb = thumbnails.thumbnail(source, 5, size=96)
  assert thumb.size == (96, 96) and thumb.mode == "RGB"
  pixels_96x96x3 = np.asarray(thumb)
  # Each of the 8x8 pixels becomes a 12x12 block of exactly its value.
  blocks = pixels_96x96x3.reshape(8, 12, 8, 12, 3)
  np.testing.assert_array_equal(blocks[:, 0, :, 0], source[5]["image"])
  assert (blocks == blocks[:, :1, :, :1]).all()


def _write_jpeg(path, width, height, exif=None):
  """Left half red, right half blue."""
  array = np.zeros((height, width, 3), np.uint8)
  array[:, :width // 2, 0] = 255
  array[:, width // 2:, 2] = 255
  kwargs = {"exif": exif} if exif is not None else {}
  PIL.Image.fromarray(array).save(path, format="JPEG", quality=95, **kwargs)


def test_image_file_keeps_its_aspect_and_colours(tmp_path):
  (tmp_path / "cats").mkdir()
  _write_jpeg(tmp_path / "cats" / "a.jpg", 400, 200)
  source = folders.ImageFolderSource(str(tmp_path))
  thumb = np.asarray(thumbnails.thumbnail(source, 0, size=64))
  assert thumb.shape == (32, 64, 3)
  left, right = thumb[:, :24].mean((0, 1)), thumb[:, 40:].mean((0, 1))
  assert left[0] > 200 and left[2] < 50
  assert right[2] > 200 and right[0] < 50


def test_exif_rotated_photo_is_shown_upright(tmp_path):
  exif = PIL.Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  _write_jpeg(tmp_path / "photo.jpg", 300, 100, exif=exif)
  assert thumbnails.from_file(str(tmp_path / "photo.jpg"), size=60).size == (20, 60)


def test_feature_source_has_no_pixels(tmp_path):
  path = tmp_path / "f.npz"
  np.savez(path, features=np.ones((3, 4), np.float32), labels=np.zeros(3, np.int32))
  source = features.FeatureSource(str(path))
  assert not thumbnails.has_pixels(source)
  assert thumbnails.has_pixels(digits.DigitsSource())
  with pytest.raises(thumbnails.NoPixelsError, match="feature vectors"):
    thumbnails.thumbnail(source, 0)


def test_out_of_range_item_and_corrupt_file_are_named(tmp_path):
  with pytest.raises(IndexError, match="1797 items"):
    thumbnails.thumbnail(digits.DigitsSource(), 1797)
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not a jpeg")
  with pytest.raises(images.CorruptImageError) as raised:
    thumbnails.from_file(str(bad))
  assert str(raised.value) == (f"{bad} is not a readable image: its bytes are in no image format "
                               "that can be read (JPEG, PNG, GIF, TIFF...)")


def test_png_bytes_round_trip():
  thumb = thumbnails.from_array(np.arange(48, dtype=np.uint8).reshape(4, 4, 3), size=8)
  data = thumbnails.png_bytes(thumb)
  assert data.startswith(b"\x89PNG")
  np.testing.assert_array_equal(np.asarray(PIL.Image.open(io.BytesIO(data))), np.asarray(thumb))
