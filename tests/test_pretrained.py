"""load_pretrained on small VGG16 files written in the real torchvision, timm and Keras formats.

The files have the real key names and layouts at 1/16 of VGG16's widths; the converted
Flax network is compared with NumPy forwards that follow each framework's own conventions
(torch: NCHW, OIHW, C-H-W flatten; Keras: NHWC, HWIO, H-W-C flatten).
"""

import collections
import math
import os
import pickle
import re
import struct
import sys
import types
import zipfile

import h5py
import numpy as np
import pytest
import safetensors.numpy
from numpy.lib.stride_tricks import sliding_window_view

from ucsh_jax import errors
from ucsh_jax import models
from ucsh_jax import preprocessing

CHANNELS = [3, 4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]  # VGG16 / 16
BLOCKS = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3),
          (5, 1), (5, 2), (5, 3)]
TORCH_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
POOL_AFTER = {2, 4, 7, 10, 13}  # number of convs done when a max-pool follows
FC, CLASSES = 256, 10
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _normal(rng, shape, fan_in):
  return (rng.normal(size=shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def torchvision_state_dict(seed=0, pooled=7):
  rng = np.random.default_rng(seed)
  sd = {}
  for index, cin, cout in zip(TORCH_CONVS, CHANNELS[:-1], CHANNELS[1:]):
    sd[f"features.{index}.weight"] = _normal(rng, (cout, cin, 3, 3), 9 * cin)
    sd[f"features.{index}.bias"] = _normal(rng, (cout,), 200)
  for index, (fin, fout) in zip((0, 3, 6), ((32 * pooled * pooled, FC), (FC, FC), (FC, CLASSES))):
    sd[f"classifier.{index}.weight"] = _normal(rng, (fout, fin), fin)
    sd[f"classifier.{index}.bias"] = _normal(rng, (fout,), 200)
  return sd


def timm_state_dict(seed=1):
  """timm's own filter: classifier.0 -> pre_logits.fc1 reshaped (out, C, 7, 7), and so on."""
  sd = torchvision_state_dict(seed)
  for old, new, shape in (("classifier.0", "pre_logits.fc1", (FC, 32, 7, 7)),
                          ("classifier.3", "pre_logits.fc2", (FC, FC, 1, 1)),
                          ("classifier.6", "head.fc", (CLASSES, FC))):
    sd[f"{new}.weight"] = sd.pop(f"{old}.weight").reshape(shape)
    sd[f"{new}.bias"] = sd.pop(f"{old}.bias")
  return sd


# ---- torch.save formats, written without torch -------------------------------------------

class _Storage:

  def __init__(self, key, values):
    self.key, self.values = key, np.ascontiguousarray(values, "<f4").ravel()


class _Tensor:
  """Pickles like a torch tensor: torch._utils.<rebuild>(storage, offset, size, stride, ...)."""

  def __init__(self, rebuild, storage, offset, size, stride):
    self.rebuild, self.args = rebuild, (storage, offset, tuple(size), tuple(stride))

  def __reduce__(self):
    fn = getattr(sys.modules["torch._utils"], self.rebuild)  # the stand-in of _dump
    if self.rebuild == "_rebuild_tensor_v2":
      return fn, self.args + (False, collections.OrderedDict())
    return fn, self.args


def _tensors(sd, rebuild):
  """Contiguous storages, except: biases share one storage (offsets), classifier.3 is a
  transposed view (strides (1, out))."""
  tensors, storages = collections.OrderedDict(), []
  biases = _Storage("biases", np.concatenate([v for k, v in sd.items() if k.endswith(".bias")]))
  storages.append(biases)
  offset = 0
  for name, value in sd.items():
    if name.endswith(".bias"):
      tensors[name] = _Tensor(rebuild, biases, offset, value.shape, (1,))
      offset += value.size
    elif name == "classifier.3.weight":
      storage = _Storage(str(len(storages)), value.T)
      storages.append(storage)
      tensors[name] = _Tensor(rebuild, storage, 0, value.shape, (1, value.shape[0]))
    else:
      storage = _Storage(str(len(storages)), value)
      storages.append(storage)
      strides = [math.prod(value.shape[i + 1:]) for i in range(value.ndim)]
      tensors[name] = _Tensor(rebuild, storage, 0, value.shape, strides)
  return tensors, storages


def _dump(obj, file, legacy):
  """Pickles obj with protocol 2 as torch.save does, storages as persistent ids."""
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
  for name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
    fn = lambda *args: None  # noqa: E731  (never called: pickled by name only)
    fn.__module__, fn.__name__, fn.__qualname__ = "torch._utils", name, name
    setattr(utils, name, fn)
  torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
  torch._utils = utils

  class Pickler(pickle.Pickler):

    def persistent_id(self, obj):
      if isinstance(obj, _Storage):
        pid = ("storage", torch.FloatStorage, obj.key, "cpu", obj.values.size)
        return pid + (None,) if legacy else pid
      return None

  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(sys.modules, "torch", torch)
    mp.setitem(sys.modules, "torch._utils", utils)
    Pickler(file, protocol=2).dump(obj)


def write_zip_pth(path, sd=None, payload=None):
  """torch >= 1.6 layout: archive/data.pkl, archive/data/<key>, archive/version, byteorder.

  `payload` replaces data.pkl by the given pickle bytes.
  """
  tensors, storages = _tensors(sd, "_rebuild_tensor_v2") if sd is not None else ({}, [])
  with zipfile.ZipFile(path, "w") as archive:
    with archive.open("archive/data.pkl", "w") as f:
      if payload is None:
        _dump(tensors, f, legacy=False)
      else:
        f.write(payload)
    archive.writestr("archive/byteorder", "little")
    for storage in storages:
      archive.writestr(f"archive/data/{storage.key}", storage.values.tobytes())
    archive.writestr("archive/version", "3\n")


def write_legacy_pth(path, sd, extra=None):
  """Pre-1.6 layout: magic, protocol, sys info, object, storage keys, then (numel, bytes).

  `extra` adds entries to the pickled dict as they are.
  """
  tensors, storages = _tensors(sd, "_rebuild_tensor")
  with open(path, "wb") as f:
    for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                        "type_sizes": {"short": 2, "int": 4, "long": 8}}):
      pickle.dump(header, f, protocol=2)
    _dump({**tensors, **(extra or {})}, f, legacy=True)
    pickle.dump([s.key for s in storages], f, protocol=2)
    for storage in storages:
      f.write(struct.pack("<q", storage.values.size) + storage.values.tobytes())


def keras_layers(seed=2, pooled=2):
  rng = np.random.default_rng(seed)
  layers = {}
  for (block, index), cin, cout in zip(BLOCKS, CHANNELS[:-1], CHANNELS[1:]):
    layers[f"block{block}_conv{index}"] = (_normal(rng, (3, 3, cin, cout), 9 * cin),
                                           _normal(rng, (cout,), 200))
  for name, fin, fout in (("fc1", 32 * pooled * pooled, FC), ("fc2", FC, FC),
                          ("predictions", FC, CLASSES)):
    layers[name] = (_normal(rng, (fin, fout), fin), _normal(rng, (fout,), 200))
  return layers


def write_keras_h5(path, layers):
  """Keras 2 save_weights layout: <layer>/<layer>/kernel:0 and bias:0, name attributes."""
  order = ["input_1"]
  for done, (block, index) in enumerate(BLOCKS, 1):
    order.append(f"block{block}_conv{index}")
    if done in POOL_AFTER:
      order.append(f"block{block}_pool")
  order += ["flatten", "fc1", "fc2", "predictions"]
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([n.encode() for n in order])
    f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
    for name in order:
      group = f.create_group(name)
      weight_names = [f"{name}/kernel:0", f"{name}/bias:0"] if name in layers else []
      group.attrs["weight_names"] = np.array([n.encode() for n in weight_names], dtype="S")
      for weight_name, value in zip(weight_names, layers.get(name, ())):
        group.create_dataset(weight_name, data=value)


# ---- independent NumPy forwards ----------------------------------------------------------

def _adaptive_pool_nchw(x, size):
  n, c, h, w = x.shape
  out = np.zeros((n, c, size, size))
  for i in range(size):
    for j in range(size):
      out[:, :, i, j] = x[:, :, math.floor(i * h / size):math.ceil((i + 1) * h / size),
                          math.floor(j * w / size):math.ceil((j + 1) * w / size)].mean((2, 3))
  return out


def torch_forward(x_NCHW, sd, timm=False):
  """torchvision (or timm) VGG16 in NumPy: returns fc6, fc7 (after ReLU) and logits."""
  x = x_NCHW.astype(np.float64)
  for done, index in enumerate(TORCH_CONVS, 1):
    windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), (2, 3))
    x = np.einsum("nchwij,ocij->nohw", windows, sd[f"features.{index}.weight"])
    x = np.maximum(x + sd[f"features.{index}.bias"][:, None, None], 0)
    if done in POOL_AFTER:
      n, c, h, w = x.shape
      x = x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max((3, 5))
  x = _adaptive_pool_nchw(x, 7)
  if timm:  # fc1 is a 7x7 conv over the pooled map, fc2 a 1x1 conv
    fc6 = np.einsum("nchw,ochw->no", x, sd["pre_logits.fc1.weight"]) + sd["pre_logits.fc1.bias"]
    fc6 = np.maximum(fc6, 0)
    fc7 = np.maximum(np.einsum("ni,oi->no", fc6, sd["pre_logits.fc2.weight"][:, :, 0, 0])
                     + sd["pre_logits.fc2.bias"], 0)
    return fc6, fc7, fc7 @ sd["head.fc.weight"].T + sd["head.fc.bias"]
  x = x.reshape(x.shape[0], -1)  # C, H, W order, like torch.flatten
  fc6 = np.maximum(x @ sd["classifier.0.weight"].T + sd["classifier.0.bias"], 0)
  fc7 = np.maximum(fc6 @ sd["classifier.3.weight"].T + sd["classifier.3.bias"], 0)
  return fc6, fc7, fc7 @ sd["classifier.6.weight"].T + sd["classifier.6.bias"]


def keras_forward(x_NHWC, layers):
  """Keras VGG16 in NumPy (no adaptive pool; Flatten in H, W, C order)."""
  x = x_NHWC.astype(np.float64)
  for done, (block, index) in enumerate(BLOCKS, 1):
    kernel, bias = layers[f"block{block}_conv{index}"]
    windows = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), (1, 2))
    x = np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias, 0)
    if done in POOL_AFTER:
      n, h, w, c = x.shape
      x = x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
  x = x.reshape(x.shape[0], -1)
  fc6 = np.maximum(x @ layers["fc1"][0] + layers["fc1"][1], 0)
  fc7 = np.maximum(fc6 @ layers["fc2"][0] + layers["fc2"][1], 0)
  return fc6, fc7, fc7 @ layers["predictions"][0] + layers["predictions"][1]


def _flax_forward(variables, x_NHWC, pooled):
  model = models.VGG16(num_classes=CLASSES, width=1 / 16, pooled_size=pooled)
  out = model.apply(variables, x_NHWC, train=False)
  return out["fc6"], out["fc7"], out["logits"]


def _assert_close(got, want):
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


@pytest.fixture(scope="module")
def images_NCHW():
  # 64x64 leaves a 2x2 map: the pool replicates it to 7x7 with distinct values per position.
  return np.random.default_rng(7).normal(size=(2, 3, 64, 64)).astype(np.float32)


def test_torchvision_zip_pth_matches_numpy_forward(tmp_path, images_NCHW, monkeypatch):
  sd = torchvision_state_dict()
  path = tmp_path / "vgg16-397923af.pth"
  write_zip_pth(path, sd)
  monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` would now fail
  variables, prep = models.load_pretrained(path)
  assert prep == preprocessing.IMAGENET
  want = torch_forward(images_NCHW, sd)
  _assert_close(_flax_forward(variables, images_NCHW.transpose(0, 2, 3, 1), 7), want)
  # The classic bug, fc6 taken without the C,H,W -> H,W,C permutation, must be visible here.
  naive = {**variables["params"], "fc6": {"kernel": sd["classifier.0.weight"].T,
                                          "bias": sd["classifier.0.bias"]}}
  naive_fc6 = _flax_forward({"params": naive}, images_NCHW.transpose(0, 2, 3, 1), 7)[0]
  assert not np.allclose(naive_fc6, want[0], rtol=0.05, atol=0.05 * np.abs(want[0]).max())


def test_legacy_pth_gives_the_same_params_as_zip(tmp_path):
  sd = torchvision_state_dict(seed=3)
  write_zip_pth(tmp_path / "new.pth", sd)
  write_legacy_pth(tmp_path / "old.pth", sd)
  new, _ = models.load_pretrained(tmp_path / "new.pth")
  old, prep = models.load_pretrained(tmp_path / "old.pth")
  assert prep == preprocessing.IMAGENET
  assert sorted(old["params"]) == sorted(new["params"])
  for layer in new["params"]:
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(old["params"][layer][name], new["params"][layer][name])
  np.testing.assert_array_equal(new["params"]["conv2_1"]["kernel"],
                                sd["features.5.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(new["params"]["fc7"]["kernel"], sd["classifier.3.weight"].T)


def test_timm_safetensors_matches_numpy_forward(tmp_path, images_NCHW):
  sd = timm_state_dict()
  path = tmp_path / "weights.bin"  # the format is found from the content
  safetensors.numpy.save_file(sd, str(path))
  variables, prep = models.load_pretrained(path)
  assert prep == preprocessing.IMAGENET
  _assert_close(_flax_forward(variables, images_NCHW.transpose(0, 2, 3, 1), 7),
                torch_forward(images_NCHW, sd, timm=True))


def test_keras_h5_matches_numpy_forward(tmp_path, images_NCHW):
  layers = keras_layers()
  path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
  write_keras_h5(path, layers)
  variables, prep = models.load_pretrained(path)
  assert prep == preprocessing.CAFFE
  x = images_NCHW.transpose(0, 2, 3, 1)
  _assert_close(_flax_forward(variables, x, 2), keras_forward(x, layers))


# ---- refused and broken files -----------------------------------------------------------

class _Call:
  """Unpickles as fn(*args): the shape of every code-running pickle."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


@pytest.mark.parametrize("fn, argument, global_regex", [
    (os.system, "touch {marker}", re.escape(f"{os.system.__module__}.system")),
    # Protocol 2 writes builtins as __builtin__ (Python 2 name).
    (eval, "open({marker!r}, 'w')", r"(__builtin__|builtins)\.eval"),
])
def test_code_in_a_pth_pickle_is_refused_and_never_runs(tmp_path, fn, argument, global_regex):
  live = tmp_path / "live"
  pickle.loads(pickle.dumps(_Call(fn, argument.format(marker=str(live)))))
  assert live.exists()  # the payload does run under a plain unpickler

  marker = tmp_path / "marker"
  evil = {"features.0.weight": _Call(fn, argument.format(marker=str(marker)))}
  write_zip_pth(tmp_path / "evil.pth", payload=pickle.dumps(evil, protocol=2))
  write_legacy_pth(tmp_path / "evil_legacy.pth", torchvision_state_dict(), extra=evil)
  for name in ("evil.pth", "evil_legacy.pth"):
    with pytest.raises(models.UnsafePickleError,
                       match=rf"{name}: refusing to load global '{global_regex}'"):
      models.load_pretrained(tmp_path / name)
  assert not marker.exists()


def test_pth_with_other_objects_is_refused(tmp_path):
  write_zip_pth(tmp_path / "array.pth", payload=pickle.dumps({"a": np.zeros(3)}, protocol=2))
  with pytest.raises(models.UnsafePickleError, match=r"array\.pth: refusing to load global "
                     r"'numpy\.[\w.]*_reconstruct'"):
    models.load_pretrained(tmp_path / "array.pth")


def test_wrong_shapes_and_keys_are_named(tmp_path):
  sd = torchvision_state_dict()
  sd["features.2.weight"] = sd["features.2.weight"][:, :3]
  safetensors.numpy.save_file(sd, str(tmp_path / "shape.safetensors"))
  with pytest.raises(ValueError, match=r"shape\.safetensors: .*" + re.escape(
      "features.2.weight: expected shape (4, 4, 3, 3), found (4, 3, 3, 3)")):
    models.load_pretrained(tmp_path / "shape.safetensors")

  sd = torchvision_state_dict()
  del sd["classifier.6.bias"]
  sd["features.1.weight"] = np.zeros(3, np.float32)
  write_zip_pth(tmp_path / "keys.pth", sd)
  with pytest.raises(ValueError, match=re.escape(
      "keys.pth: not a torchvision VGG16 checkpoint: missing keys ['classifier.6.bias'], "
      "unexpected keys ['features.1.weight']")):
    models.load_pretrained(tmp_path / "keys.pth")

  layers = keras_layers()
  layers["fc2"] = (np.zeros((FC, FC + 1), np.float32), layers["fc2"][1])
  write_keras_h5(tmp_path / "shape.h5", layers)
  with pytest.raises(ValueError, match=re.escape(
      "fc2/kernel: expected shape (256, 256), found (256, 257)")):
    models.load_pretrained(tmp_path / "shape.h5")


def _write(kind, path):
  if kind == "zip":
    write_zip_pth(path, torchvision_state_dict())
  elif kind == "legacy":
    write_legacy_pth(path, torchvision_state_dict())
  elif kind == "safetensors":
    safetensors.numpy.save_file(timm_state_dict(), str(path))
  else:
    write_keras_h5(path, keras_layers())


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors", "h5"])
def test_truncated_files_give_an_error_naming_the_file(tmp_path, kind):
  path = tmp_path / f"cut_{kind}.weights"
  _write(kind, path)
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  with pytest.raises(ValueError, match=rf"cut_{kind}\.weights: cannot read"):
    models.load_pretrained(path)


def test_unknown_and_missing_files(tmp_path):
  path = tmp_path / "noise.pth"
  path.write_bytes(np.random.default_rng(0).bytes(1000))
  with pytest.raises(ValueError, match=r"noise\.pth: not a torch \.pth"):
    models.load_pretrained(path)
  with pytest.raises(errors.UserError, match=r"absent\.pth"):
    models.load_pretrained(tmp_path / "absent.pth")
