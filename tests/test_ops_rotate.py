"""ops.rotate_images against NumPy: np.rot90 at 90 degrees, a loop-written bilinear rotation
with zero padding at small angles (no SciPy)."""

import jax
import numpy as np
import pytest

from ucsh_jax import ops


def _numpy_rotate(image_HxWxC, degrees):
  """Bilinear rotation about the centre with zero padding, one output pixel at a time."""
  height, width, _ = image_HxWxC.shape
  c_row, c_col = (height - 1) / 2, (width - 1) / 2
  theta = np.deg2rad(degrees)
  out = np.zeros(image_HxWxC.shape, np.float64)

  def pixel(r, c):
    inside = 0 <= r < height and 0 <= c < width
    return image_HxWxC[r, c] if inside else np.zeros(image_HxWxC.shape[-1])

  for i in range(height):
    for j in range(width):
      # Counter-clockwise as displayed: the output samples the input rotated back by theta.
      row = c_row + np.cos(theta) * (i - c_row) + np.sin(theta) * (j - c_col)
      col = c_col - np.sin(theta) * (i - c_row) + np.cos(theta) * (j - c_col)
      r0, c0 = int(np.floor(row)), int(np.floor(col))
      fr, fc = row - r0, col - c0
      out[i, j] = ((1 - fr) * (1 - fc) * pixel(r0, c0) + (1 - fr) * fc * pixel(r0, c0 + 1)
                   + fr * (1 - fc) * pixel(r0 + 1, c0) + fr * fc * pixel(r0 + 1, c0 + 1))
  return out


def _images(shape, seed=0):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_ninety_degrees_is_rot90_counter_clockwise():
  images = _images((3, 7, 7, 2))
  got = np.asarray(jax.jit(ops.rotate_images)(images, np.float32([90, -90, 180])))
  np.testing.assert_allclose(got[0], np.rot90(images[0], 1, axes=(0, 1)), atol=1e-5)
  np.testing.assert_allclose(got[1], np.rot90(images[1], -1, axes=(0, 1)), atol=1e-5)
  np.testing.assert_allclose(got[2], np.rot90(images[2], 2, axes=(0, 1)), atol=1e-5)


def test_zero_degrees_is_the_image():
  images = _images((2, 5, 6, 3), seed=1)
  got = np.asarray(jax.jit(ops.rotate_images)(images, np.float32([0, 0])))
  np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("degrees", [5.0, -10.0, 33.0])
def test_small_angles_equal_a_numpy_bilinear_rotation(degrees):
  images = _images((2, 8, 6, 3), seed=2)
  angles = np.float32([degrees, -0.5 * degrees])
  got = np.asarray(jax.jit(ops.rotate_images)(images, angles))
  for image, angle, rotated in zip(images, angles, got):
    np.testing.assert_allclose(rotated, _numpy_rotate(image.astype(np.float64), float(angle)),
                               atol=2e-5)


def test_corners_rotated_out_of_the_picture_read_zero():
  images = np.ones((1, 9, 9, 1), np.float32)
  got = np.asarray(jax.jit(ops.rotate_images)(images, np.float32([45])))
  assert got[0, 0, 0, 0] == 0 and got[0, -1, -1, 0] == 0
  np.testing.assert_allclose(got[0, 4, 4, 0], 1.0)
