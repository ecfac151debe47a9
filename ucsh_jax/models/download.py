"""The standard ImageNet VGG16 weight files: found in a cache folder or downloaded once."""

import dataclasses
import hashlib
import os
import shutil
import urllib.request

from ucsh_jax import errors


@dataclasses.dataclass(frozen=True)
class _Source:
  filename: str  # path under the cache folder
  url: str
  sha256_prefix: str = ""  # torchvision names its files after their hash


SOURCES = {
    "torchvision": _Source("vgg16-397923af.pth",
                           "https://download.pytorch.org/models/vgg16-397923af.pth",
                           sha256_prefix="397923af"),
    "timm": _Source("vgg16.tv_in1k/model.safetensors",
                    "https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/model.safetensors"),
    "keras": _Source("vgg16_weights_tf_dim_ordering_tf_kernels.h5",
                     "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                     "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    "keras_notop": _Source("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                           "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                           "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
# The files' own names also select them.
_ALIASES = {"vgg16-397923af.pth": "torchvision", "vgg16.tv_in1k": "timm",
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5": "keras",
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": "keras_notop"}
# What config.model.pretrained may say instead of a path: a source or a file's own name.
NAMES = tuple(SOURCES) + tuple(_ALIASES)


def source_of(name: str) -> _Source:
  """The standard file a name selects (KeyError for any other name)."""
  return SOURCES[_ALIASES.get(name, name)]


def download_pretrained(name: str, cache_dir: str, timeout_s: float = 10.0) -> str:
  """Returns the local path of a standard VGG16 weight file, downloading it if absent.

  Args:
    name: "torchvision" (or "vgg16-397923af.pth"), "timm" (or "vgg16.tv_in1k"), "keras"
      (or "vgg16_weights_tf_dim_ordering_tf_kernels.h5"), "keras_notop" (or
      "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", the conv base alone).
    cache_dir: folder holding the files (timm's as `vgg16.tv_in1k/model.safetensors`).
    timeout_s: network timeout; without network access the call fails at once.

  Returns:
    Path of the file under cache_dir.

  Raises:
    ValueError: unknown name.
    RuntimeError: the download failed or gave a file with the wrong hash; the message says
      which file to fetch from where and where to put it.
  """
  key = _ALIASES.get(name, name)
  if key not in SOURCES:
    raise errors.UserError(f"unknown pretrained weights {name!r}; choose one of "
                           f"{sorted(SOURCES) + sorted(_ALIASES)}")
  source = SOURCES[key]
  path = os.path.join(cache_dir, source.filename)
  if os.path.isfile(path):
    return path
  help_text = (f"Download {source.url} on a machine with internet access and put it at {path} "
               "(or pass the file's path instead of a name).")
  partial = path + ".part"
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with urllib.request.urlopen(source.url, timeout=timeout_s) as response:
      with open(partial, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)
  except OSError as e:  # URLError, timeouts and file errors are all OSErrors
    if os.path.exists(partial):
      os.remove(partial)
    raise errors.UserError(f"could not download the {key} VGG16 weights ({e}). {help_text}") from e
  if source.sha256_prefix:
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    if not digest.hexdigest().startswith(source.sha256_prefix):
      os.remove(partial)
      raise errors.UserError(f"{source.url} gave a file whose sha256 {digest.hexdigest()} does not "
                         f"start with {source.sha256_prefix}. {help_text}")
  os.replace(partial, path)
  return path
