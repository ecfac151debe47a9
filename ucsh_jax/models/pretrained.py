"""ImageNet VGG16 weights from torchvision, timm or Keras files, converted to the Flax layout.

- torchvision `vgg16-397923af.pth` (torch.save): convs OIHW, fc6 and fc7 Linear
  (out, C*H*W) and (out, in); pixels `IMAGENET`.
- timm `vgg16.tv_in1k` `model.safetensors`: convs OIHW, fc6 and fc7 as convs (out, C, H, W)
  and (out, in, 1, 1); pixels `IMAGENET`.
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels.h5`: convs HWIO, fc1 and fc2 Dense
  (H*W*C, out) and (in, out); pixels `CAFFE`.
- Keras `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (`include_top=False`): the 13
  convs alone, HWIO; pixels `CAFFE`. It fits a VGG16 that ends in an average pooling.

The format is found from the file's content, not its name. torch convs are OIHW and become
HWIO; Linear (out, in) becomes (in, out); torch flattens the pooled map in C, H, W order
and Flax in H, W, C order, so fc6's input dimension is permuted.
"""

import math
import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import h5py
import numpy as np
import safetensors
import safetensors.numpy

from ucsh_jax import errors
from ucsh_jax import preprocessing
from ucsh_jax.models import safe_pickle
from ucsh_jax.models import vgg

_TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _keras_conv(name: str) -> str:
  """Keras layer name of a conv: conv3_2 -> block3_conv2."""
  block, index = name[len("conv"):].split("_")
  return f"block{block}_conv{index}"


# Per source layout: Flax layer -> (weight key, bias key, kind of the stored weight).
_TORCH_CONVS = {name: (f"features.{i}.weight", f"features.{i}.bias", "conv")
                for name, i in zip(vgg.CONV_NAMES, _TORCH_CONV_INDICES)}
_LAYOUTS = {
    "torchvision": {
        **_TORCH_CONVS,
        "fc6": ("classifier.0.weight", "classifier.0.bias", "linear_chw"),
        "fc7": ("classifier.3.weight", "classifier.3.bias", "linear"),
        "fc8": ("classifier.6.weight", "classifier.6.bias", "linear"),
    },
    "timm": {
        **_TORCH_CONVS,
        "fc6": ("pre_logits.fc1.weight", "pre_logits.fc1.bias", "conv_chw"),
        "fc7": ("pre_logits.fc2.weight", "pre_logits.fc2.bias", "conv_1x1"),
        "fc8": ("head.fc.weight", "head.fc.bias", "linear"),
    },
    "keras": {
        **{name: (f"{_keras_conv(name)}/kernel", f"{_keras_conv(name)}/bias", "flax")
           for name in vgg.CONV_NAMES},
        "fc6": ("fc1/kernel", "fc1/bias", "flax"),
        "fc7": ("fc2/kernel", "fc2/bias", "flax"),
        "fc8": ("predictions/kernel", "predictions/bias", "flax"),
    },
    "keras_notop": {name: (f"{_keras_conv(name)}/kernel", f"{_keras_conv(name)}/bias", "flax")
                    for name in vgg.CONV_NAMES},
}
# Keras layers that only the file with the classifier ("include_top") holds.
_KERAS_TOP = ("fc1", "fc2", "predictions")


def _stored_shape(kind: str, shape: Tuple[int, ...], pooled: int) -> Tuple[int, ...]:
  """Shape in the file of a Flax kernel of `shape` (fc6: (pooled * pooled * C, out))."""
  if kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if kind in ("linear", "linear_chw"):
    return (shape[1], shape[0])
  if kind == "conv_chw":
    return (shape[1], shape[0] // (pooled * pooled), pooled, pooled)
  if kind == "conv_1x1":
    return (shape[1], shape[0], 1, 1)
  return shape


def _to_flax(kind: str, kernel: np.ndarray, pooled: int) -> np.ndarray:
  """Converts a stored kernel (shape already checked) to the Flax layout."""
  if kind == "conv":
    return kernel.transpose(2, 3, 1, 0)
  if kind in ("linear", "conv_1x1"):
    return kernel.reshape(kernel.shape[0], -1).T
  if kind in ("linear_chw", "conv_chw"):
    out = kernel.shape[0]
    chw = kernel.reshape(out, -1, pooled, pooled)
    return chw.transpose(2, 3, 1, 0).reshape(-1, out)
  return kernel


def _infer_architecture(raw: Mapping[str, np.ndarray], layout: Mapping[str, Tuple[str, str, str]]
                        ) -> Tuple[float, int, Optional[int]]:
  """(width, pooled_size, num_classes) that the stored shapes suggest; VGG16's own defaults
  where a shape is unusable, so that the shape check names the key. A conv base alone has
  pooled size 7 and no classes (None)."""
  def out_dim(layer):
    weight_key, _, kind = layout[layer]
    shape = raw[weight_key].shape
    return shape[-1] if kind == "flax" else shape[0]

  try:
    width = out_dim("conv1_1") / 64
    if "fc6" not in layout:
      return width, 7, None
    channels = vgg.scaled_width(512, width)
    weight_key, _, kind = layout["fc6"]
    fc6_shape = raw[weight_key].shape
    fc6_in = fc6_shape[0] if kind == "flax" else math.prod(fc6_shape[1:])
    pooled = math.isqrt(fc6_in // channels)
    if pooled * pooled * channels != fc6_in:
      pooled = 7
    return width, pooled, out_dim("fc8")
  except IndexError:
    return 1.0, 7, 1000


def convert(raw: Mapping[str, np.ndarray], layout_name: str, path: str) -> Dict[str, Any]:
  """Checks names and shapes of a raw checkpoint and converts it to VGG16 Flax params.

  Args:
    raw: {stored key: array}.
    layout_name: "torchvision", "timm", "keras" or "keras_notop".
    path: file name for error messages.

  Returns:
    {"params": {layer: {"kernel", "bias"}}} (float32 NumPy) for `VGG16(num_classes, width,
    pooled_size)` at the width, pooled size and class count the shapes imply (1.0, 7,
    1000 for the ImageNet files); conv1_1 .. conv5_3 alone for "keras_notop".

  Raises:
    ValueError: naming missing or unexpected keys, or each key with the wrong shape
      (expected and found shapes).
  """
  layout = _LAYOUTS[layout_name]
  expected_keys = {key for weight, bias, _ in layout.values() for key in (weight, bias)}
  missing = sorted(expected_keys - set(raw))
  unexpected = sorted(set(raw) - expected_keys)
  if missing or unexpected:
    raise errors.UserError(f"{path}: not a {layout_name} VGG16 checkpoint: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
  width, pooled, num_classes = _infer_architecture(raw, layout)
  shapes = vgg.vgg16_param_shapes(width, pooled, num_classes, include_fc="fc6" in layout)
  problems = []
  for layer, (weight_key, bias_key, kind) in layout.items():
    for key, want in ((weight_key, _stored_shape(kind, shapes[layer]["kernel"], pooled)),
                      (bias_key, shapes[layer]["bias"])):
      if tuple(raw[key].shape) != tuple(want):
        problems.append(f"{key}: expected shape {tuple(want)}, found {tuple(raw[key].shape)}")
      elif not np.issubdtype(raw[key].dtype, np.floating):
        problems.append(f"{key}: expected floating point values, found {raw[key].dtype}")
  if problems:
    shape = (f"width {width:g}" if num_classes is None else
             f"width {width:g}, pooled size {pooled}, {num_classes} classes")
    raise errors.UserError(f"{path}: {layout_name} VGG16 weights ({shape}) have wrong shapes: "
                           + "; ".join(problems))
  params = {}
  for layer, (weight_key, bias_key, kind) in layout.items():
    kernel = _to_flax(kind, np.asarray(raw[weight_key], np.float32), pooled)
    params[layer] = {"kernel": np.ascontiguousarray(kernel),
                     "bias": np.asarray(raw[bias_key], np.float32)}
  return {"params": params}


def _read_keras(path: str) -> Dict[str, np.ndarray]:
  """Keras 2 weights file -> {"<layer>/kernel": HWIO or (in, out), "<layer>/bias": ...}.

  Like Keras itself, takes each layer's weights in the order of its `weight_names` attribute
  (kernel, then bias), whatever they are called (`kernel:0`, `block1_conv1_W_1:0`).
  """
  raw = {}
  with h5py.File(path, "r") as f:
    if "layer_names" not in f.attrs:
      raise errors.UserError(f"{path}: HDF5 file without a 'layer_names' attribute; not a Keras "
                             "weights file")
    for layer in f.attrs["layer_names"]:
      layer = layer.decode() if isinstance(layer, bytes) else str(layer)
      names = [n.decode() if isinstance(n, bytes) else str(n)
               for n in f[layer].attrs.get("weight_names", [])]
      if not names:
        continue
      if len(names) != 2:
        raise errors.UserError(
            f"{path}: Keras layer '{layer}' has weights {names}, expected a kernel "
            "and a bias")
      for role, name in zip(("kernel", "bias"), names):
        raw[f"{layer}/{role}"] = np.asarray(f[layer][name])
  return raw


def detect_format(path: str) -> str:
  """"torch_zip", "torch_legacy", "safetensors" or "hdf5", from the file's first bytes.

  Raises:
    FileNotFoundError: no such file.
    ValueError: none of the formats (names the file).
  """
  if not os.path.isfile(path):
    raise errors.UserError(f"pretrained weights file not found: {path}")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(16)
    userblocks = [0] + [512 << i for i in range(12) if (512 << i) < size]
    for offset in userblocks:  # HDF5 may start after a user block of 512 * 2^i bytes
      f.seek(offset)
      if f.read(8) == _HDF5_SIGNATURE:
        return "hdf5"
  if head.startswith(b"PK\x03\x04"):
    return "torch_zip"
  if head.startswith(safe_pickle.LEGACY_HEADER):
    return "torch_legacy"
  if len(head) > 8 and head[8:9] == b"{":
    return "safetensors"
  raise errors.UserError(
      f"{path}: not a torch .pth (zip or legacy), safetensors or Keras HDF5 file "
      f"(starts with {head[:8]!r})")


def load_pretrained(path: str) -> Tuple[Dict[str, Any], preprocessing.Preprocessing]:
  """Loads ImageNet VGG16 weights for `VGG16(num_classes=1000)` from any supported file.

  A Keras notop file (no fc1, fc2, predictions layers) gives the conv base alone, for a VGG16
  with an average pooling.

  Width, pooled size and class count follow the stored shapes (1.0, 7 and 1000 for the
  ImageNet files; smaller files load for the matching `VGG16(num_classes, width,
  pooled_size)`).

  Args:
    path: torchvision `.pth` (read with a restricted unpickler; never runs code from the
      file), timm or torchvision-keyed `.safetensors`, or Keras `.h5` (with or without top).

  Returns:
    (variables, preprocessing): variables {"params": ...} as float32 NumPy arrays, and the
    pixel normalisation the weights expect (`IMAGENET` for torch files, `CAFFE` for Keras).

  Raises:
    FileNotFoundError: the file does not exist.
    safe_pickle.UnsafePickleError: a `.pth` pickle asks for a global it may not use.
    ValueError: unknown format, truncated or unreadable file, wrong keys or shapes.
  """
  path = os.fspath(path)
  kind = detect_format(path)
  try:
    if kind == "hdf5":
      raw = _read_keras(path)
    elif kind == "safetensors":
      raw = safetensors.numpy.load_file(path)
    else:
      raw = safe_pickle.read_torch_state_dict(path)
  except safe_pickle.UnsafePickleError:
    raise
  except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile,
          pickle.UnpicklingError, safetensors.SafetensorError) as e:
    raise errors.UserError(
        f"{path}: cannot read this {kind} file (truncated or corrupt?): {e}") from e
  if kind == "hdf5":
    has_top = any(key.split("/")[0] in _KERAS_TOP for key in raw)
    return convert(raw, "keras" if has_top else "keras_notop", path), preprocessing.CAFFE
  layout = "timm" if any(k.startswith("pre_logits.") for k in raw) else "torchvision"
  return convert(raw, layout, path), preprocessing.IMAGENET
