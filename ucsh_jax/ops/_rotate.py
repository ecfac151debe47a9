"""Rotation of a batch of images about their centres (DeepBit's rotated views)."""

import jax
import jax.numpy as jnp


def rotate_images(images_BxHxWxC: jax.Array, degrees_B: jax.Array) -> jax.Array:
  """Each image rotated by its angle about the image centre: bilinear, zero padding, same size.

  The output pixel at (row i, column j) samples the input at the centre c = ((H-1)/2,
  (W-1)/2) plus the offset (i - c_r, j - c_c) rotated by -theta:
    row = c_r + cos(theta) (i - c_r) + sin(theta) (j - c_c)
    col = c_c - sin(theta) (i - c_r) + cos(theta) (j - c_c)
  so a positive angle turns the picture counter-clockwise as displayed (rows downwards), like
  MATLAB's imrotate and `np.rot90` (90 degrees is exactly np.rot90 on a square image).
  Positions outside the input read 0 (`map_coordinates` mode "constant"): pixels whose
  bilinear neighbours fall partly outside are blended with 0. The output keeps the input's
  size (imrotate's "crop" box, which the DeepBit authors' centre crop of the loose box is).

  Args:
    images_BxHxWxC: (B, H, W, C) float images (any normalisation: 0 is what pads them).
    degrees_B: (B,) angles in degrees.

  Returns:
    (B, H, W, C) rotated images, the input's dtype; differentiable in the images.
  """
  _, height, width, _ = images_BxHxWxC.shape
  c_row, c_col = (height - 1) / 2.0, (width - 1) / 2.0
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) - c_row,
                            jnp.arange(width, dtype=jnp.float32) - c_col, indexing="ij")

  def one(image_HxWxC, degrees):
    theta = jnp.deg2rad(degrees.astype(jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    source = jnp.stack([c_row + cos * rows + sin * cols, c_col - sin * rows + cos * cols])
    channel = lambda x_HxW: jax.scipy.ndimage.map_coordinates(
        x_HxW, list(source), order=1, mode="constant", cval=0.0)
    return jax.vmap(channel, in_axes=2, out_axes=2)(image_HxWxC.astype(jnp.float32))

  return jax.vmap(one)(images_BxHxWxC, degrees_B).astype(images_BxHxWxC.dtype)
