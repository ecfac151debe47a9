"""VGG16 in Flax Linen with torchvision's architecture and adaptive average pool."""

import functools
import math
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Output channels of the 13 convolutions, block by block (torchvision "D" configuration).
_CONV_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CONV_NAMES = tuple(f"conv{b + 1}_{i + 1}"
                   for b, block in enumerate(_CONV_BLOCKS) for i in range(len(block)))
FC_NAMES = ("fc6", "fc7", "fc8")
FC_FEATURES = 4096
# The five 2x2 max-pools shrink the input by this factor.
_STRIDE = 2**len(_CONV_BLOCKS)

# torchvision initialisation: kaiming normal (fan_out, ReLU) convs, N(0, 0.01) linears, zero biases.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_DENSE_INIT = nn.initializers.normal(0.01)


def scaled_width(channels: int, width: float) -> int:
  """Channel count of a layer of `channels` at width multiplier `width` (at least 1)."""
  return max(1, int(round(channels * width)))


def vgg16_param_shapes(width: float = 1.0,
                       pooled_size: int = 7,
                       num_classes: Optional[int] = None) -> Dict[str, Dict[str, Tuple[int, ...]]]:
  """Parameter shapes of `VGG16(num_classes, width, pooled_size)`, computed without Flax.

  Returns:
    {layer: {"kernel": shape, "bias": shape}}: convs HWIO (3, 3, in, out), dense kernels
    (in, out); fc6's input is pooled_size * pooled_size * channels in H, W, C order.
  """
  shapes = {}
  in_channels = 3
  for name, channels in zip(CONV_NAMES, (c for block in _CONV_BLOCKS for c in block)):
    out_channels = scaled_width(channels, width)
    shapes[name] = {"kernel": (3, 3, in_channels, out_channels), "bias": (out_channels,)}
    in_channels = out_channels
  fc = scaled_width(FC_FEATURES, width)
  shapes["fc6"] = {"kernel": (pooled_size * pooled_size * in_channels, fc), "bias": (fc,)}
  shapes["fc7"] = {"kernel": (fc, fc), "bias": (fc,)}
  if num_classes is not None:
    shapes["fc8"] = {"kernel": (fc, num_classes), "bias": (num_classes,)}
  return shapes


def _pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) averaging weights of torch's AdaptiveAvgPool over one axis.

  Output cell i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1, so a
  smaller input is replicated (1 -> 7 copies the value) and a larger one is averaged.
  """
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x_NHWC: jax.Array, output_size: int) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d((output_size, output_size)) for NHWC input."""
  _, height, width, _ = x_NHWC.shape
  if (height, width) == (output_size, output_size):
    return x_NHWC
  rows = jnp.asarray(_pool_matrix(height, output_size), x_NHWC.dtype)
  cols = jnp.asarray(_pool_matrix(width, output_size), x_NHWC.dtype)
  return jnp.einsum("oh,nhwc,pw->nopc", rows, x_NHWC, cols)


class VGG16(nn.Module):
  """torchvision VGG16: 13 3x3 convs with ReLU, five 2x2 max-pools, adaptive pool, fc6-fc8.

  Attributes:
    num_classes: size of fc8; None leaves fc8 out (the network ends at fc7).
    width: multiplier of every conv and fc width (1.0 is VGG16; smaller for tests).
    pooled_size: side of the adaptive average pool before fc6 (7 in torchvision).
    dropout_rate: dropout after fc6 and fc7 in train mode (the 'dropout' rng).
    dtype: computation dtype (e.g. bfloat16); parameters stay float32.

  Parameters are flat: conv1_1 .. conv5_3, fc6, fc7, fc8, each with kernel and bias.
  """

  num_classes: Optional[int] = None
  width: float = 1.0
  pooled_size: int = 7
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> Dict[str, jax.Array]:
    """Runs the network.

    Args:
      images: (n, H, W, 3) float images, normalised as the weights expect; H, W >= 32.
      train: enables dropout.

    Returns:
      {"fc6": (n, F), "fc7": (n, F)} after ReLU and before dropout, F = 4096 * width, and
      "logits" (n, num_classes) when num_classes is set; all float32.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"VGG16 expects images of shape (n, H, W, 3), got {images.shape}")
    if min(images.shape[1:3]) < _STRIDE:
      raise ValueError(
          f"VGG16 needs images of at least {_STRIDE}x{_STRIDE} pixels, got {images.shape}")
    x = images.astype(self.dtype)
    names = iter(CONV_NAMES)
    for block in _CONV_BLOCKS:
      for channels in block:
        x = nn.Conv(scaled_width(channels, self.width), (3, 3), padding=1, dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=_CONV_INIT, name=next(names))(x)
        x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = adaptive_avg_pool(x, self.pooled_size)
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # H, W, C order

    fc = scaled_width(FC_FEATURES, self.width)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=_DENSE_INIT)
    fc6 = nn.relu(dense(fc, name="fc6")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(fc6)
    fc7 = nn.relu(dense(fc, name="fc7")(x))
    outputs = {"fc6": fc6.astype(jnp.float32), "fc7": fc7.astype(jnp.float32)}
    if self.num_classes is not None:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(fc7)
      outputs["logits"] = dense(self.num_classes, name="fc8")(x).astype(jnp.float32)
    return outputs
