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
# What the network ends in: fc7 (torchvision's VGG16), or a global average pool of the conv
# base's last maps, taken before block 5's max-pool ("avg_conv5_3") or after it ("avg_pool5").
POOLINGS = ("fc7", "avg_conv5_3", "avg_pool5")
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
                       num_classes: Optional[int] = None,
                       include_fc: bool = True) -> Dict[str, Dict[str, Tuple[int, ...]]]:
  """Parameter shapes of `VGG16(num_classes, width, pooled_size)`, computed without Flax.

  Returns:
    {layer: {"kernel": shape, "bias": shape}}: convs HWIO (3, 3, in, out), dense kernels
    (in, out); fc6's input is pooled_size * pooled_size * channels in H, W, C order. Without
    `include_fc`, the conv base alone (the layers of an average-pooling VGG16).
  """
  shapes = {}
  in_channels = 3
  for name, channels in zip(CONV_NAMES, (c for block in _CONV_BLOCKS for c in block)):
    out_channels = scaled_width(channels, width)
    shapes[name] = {"kernel": (3, 3, in_channels, out_channels), "bias": (out_channels,)}
    in_channels = out_channels
  if not include_fc:
    return shapes
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


def conv_stages(width: float = 1.0) -> Tuple[Tuple[str, int], ...]:
  """The conv base in order: ("conv1_1", channels), ..., ("pool1", 0), ..., ("pool5", 0)."""
  stages = []
  names = iter(CONV_NAMES)
  for b, block in enumerate(_CONV_BLOCKS):
    stages += [(next(names), scaled_width(channels, width)) for channels in block]
    stages.append((f"pool{b + 1}", 0))
  return tuple(stages)


def layer_names(pooling: str = "fc7") -> Tuple[str, ...]:
  """The layers, in order, that a frozen prefix may end before (`VGG16.start_layer`)."""
  return CONV_NAMES + (FC_NAMES[:2] if pooling == "fc7" else ())


def min_image_size(pooling: str = "fc7") -> int:
  """The smallest image side the network takes: every max-pool it runs halves the maps."""
  return _STRIDE // 2 if pooling == "avg_conv5_3" else _STRIDE


class VGG16(nn.Module):
  """torchvision VGG16: 13 3x3 convs with ReLU, five 2x2 max-pools, then a pooling.

  With `pooling="fc7"` (torchvision's network) an adaptive average pool, fc6 and fc7 (and fc8
  when num_classes is set) follow the conv base. The conv base alone (the "notop" weights)
  ends in a global average pool: of conv5_3's ReLU output before the last max-pool
  (`"avg_conv5_3"`), or after it (`"avg_pool5"`).

  The network can also run a part of itself: from `start_layer` (its input is then the
  activation that enters that layer, e.g. block 4's pooled maps for "conv5_1") and/or up to
  `stop_layer` (it then returns that layer's input as "prefix"). A frozen prefix is computed
  once with `stop_layer` and the rest trained with `start_layer`.

  Attributes:
    num_classes: size of fc8; None leaves fc8 out (the network ends at fc7).
    width: multiplier of every conv and fc width (1.0 is VGG16; smaller for tests).
    pooled_size: side of the adaptive average pool before fc6 (7 in torchvision).
    dropout_rate: dropout after fc6 and fc7 in train mode (the 'dropout' rng).
    dtype: computation dtype (e.g. bfloat16); parameters stay float32.
    pooling: one of POOLINGS.
    start_layer: the first layer run, one of `layer_names(pooling)`.
    stop_layer: "" (run to the end) or the layer before which to stop.

  Parameters are flat: conv1_1 .. conv5_3, fc6, fc7, fc8, each with kernel and bias (only the
  layers the network runs).
  """

  num_classes: Optional[int] = None
  width: float = 1.0
  pooled_size: int = 7
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  pooling: str = "fc7"
  start_layer: str = CONV_NAMES[0]
  stop_layer: str = ""

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool) -> Dict[str, jax.Array]:
    """Runs the network (or the part of it that start_layer and stop_layer select).

    Args:
      inputs: (n, H, W, 3) float images, normalised as the weights expect, H, W at least
        `min_image_size(pooling)`; or, with a later start_layer, the activation entering it
        ((n, h, w, c) maps, or (n, f) vectors for fc6 and fc7).
      train: enables dropout.

    Returns:
      With stop_layer: {"prefix": the input of stop_layer}. Otherwise for pooling "fc7"
      {"fc6": (n, F), "fc7": (n, F)} after ReLU and before dropout, F = 4096 * width, and
      "logits" (n, num_classes) when num_classes is set; for the average poolings
      {"pooled": (n, C)}, C = 512 * width. All float32.
    """
    names = layer_names(self.pooling)
    for what, name in (("start_layer", self.start_layer), ("stop_layer", self.stop_layer)):
      if name and name not in names:
        raise ValueError(f"{what}={name!r} is not a layer of this VGG16; expected one of {names}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r}; expected one of {POOLINGS}")
    if self.stop_layer and names.index(self.stop_layer) <= names.index(self.start_layer):
      raise ValueError(f"stop_layer={self.stop_layer!r} must come after "
                       f"start_layer={self.start_layer!r}")
    if self.start_layer == CONV_NAMES[0]:
      if inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise ValueError(f"VGG16 expects images of shape (n, H, W, 3), got {inputs.shape}")
      if min(inputs.shape[1:3]) < min_image_size(self.pooling):
        size = min_image_size(self.pooling)
        raise ValueError(f"VGG16 needs images of at least "
                         f"{size}x{size} pixels (pooling {self.pooling!r}), got {inputs.shape}")
    x = inputs.astype(self.dtype)
    running = False
    for name, channels in conv_stages(self.width):
      running = running or name == self.start_layer
      if name == self.stop_layer:
        return {"prefix": x.astype(jnp.float32)}
      if not running:
        continue
      if name == "pool5" and self.pooling == "avg_conv5_3":
        return {"pooled": jnp.mean(x, axis=(1, 2)).astype(jnp.float32)}
      if name.startswith("pool"):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.relu(nn.Conv(channels, (3, 3), padding=1, dtype=self.dtype,
                            param_dtype=jnp.float32, kernel_init=_CONV_INIT, name=name)(x))
    if self.pooling == "avg_pool5":
      return {"pooled": jnp.mean(x, axis=(1, 2)).astype(jnp.float32)}
    return self._fc_layers(x, train=train, start=self.start_layer if not running else "fc6")

  def _fc_layers(self, x: jax.Array, *, train: bool, start: str) -> Dict[str, jax.Array]:
    """fc6, fc7 (and fc8) from the conv base's maps, or from fc6's input or output (start)."""
    if start == "fc6" and x.ndim == 4:
      x = adaptive_avg_pool(x, self.pooled_size)
      x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # H, W, C order
    if self.stop_layer == "fc6":
      return {"prefix": x.astype(jnp.float32)}
    fc = scaled_width(FC_FEATURES, self.width)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=_DENSE_INIT)
    fc6 = nn.relu(dense(fc, name="fc6")(x)) if start == "fc6" else x
    if self.stop_layer == "fc7":
      return {"prefix": fc6.astype(jnp.float32)}
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(fc6)
    fc7 = nn.relu(dense(fc, name="fc7")(x))
    outputs = {"fc6": fc6.astype(jnp.float32), "fc7": fc7.astype(jnp.float32)}
    if self.num_classes is not None:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(fc7)
      outputs["logits"] = dense(self.num_classes, name="fc8")(x).astype(jnp.float32)
    return outputs
