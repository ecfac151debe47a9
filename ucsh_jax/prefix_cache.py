"""A frozen VGG16 prefix computed once: its output for every item of a data set, cached by content.

With `config.model.trainable_from = "conv5_1"` the layers below conv5_1 never change, so neither
does their output for an image: it is computed once per image (eval mode; the conv base has no
dropout) and stored as `<cache dir>/prefix-<key>.npy`, (n, ...) float32 in the data set's order.
The key is a SHA-256 of everything that output depends on: the frozen layers' weights, the pixel
preprocessing, the image size, the layer the prefix stops before, the pooling, the width and
compute dtype, and every image's pixels in order (checking the key decodes every image once, but
runs no network). Other inputs give another key, so another file: a cache is never reused for
inputs it was not made from. Files are written under a temporary name and renamed, so runs that
share the folder (a benchmark's) never read half a file.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Dict, Mapping, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from ucsh_jax import experiment
from ucsh_jax import inference
from ucsh_jax import parallel
from ucsh_jax.models import vgg
from ucsh_jax.preprocessing import Preprocessing

CACHE_FOLDER = "prefix_cache"  # Under the workdir unless config.model.prefix_cache_dir says.
_FORMAT = 1


class PrefixSource:
  """The cached prefix outputs as a source of kind "features": `source[i]` is
  {"features": float32 (the prefix output's shape, e.g. (4, 4, 512)), "label": ...}."""

  kind = "features"

  def __init__(self, outputs: np.ndarray, labels: np.ndarray):
    if len(outputs) != len(labels):
      raise ValueError(f"{len(outputs)} prefix outputs for {len(labels)} labels")
    self.outputs = outputs
    self.labels = labels

  def __len__(self) -> int:
    return len(self.outputs)

  def __getitem__(self, i: int) -> dict:
    return {"features": np.asarray(self.outputs[int(i)], np.float32), "label": self.labels[int(i)]}


def prefix_model(config: ml_collections.ConfigDict) -> vgg.VGG16:
  """The VGG16 layers below `config.model.trainable_from`, returning {"prefix": ...}."""
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  return vgg.VGG16(width=config.model.width, pooled_size=config.model.pooled_size,
                   dropout_rate=config.model.dropout_rate, dtype=dtype,
                   pooling=config.model.pooling, stop_layer=config.model.trainable_from)


def cache_key(frozen_params: Mapping[str, Mapping[str, Any]], preprocessing: Preprocessing,
              config: ml_collections.ConfigDict, source) -> Tuple[str, Dict[str, Any]]:
  """(hex SHA-256, the key's readable parts) of the prefix outputs of every item of `source`.

  `frozen_params`: {layer: {"kernel", "bias"}} of the frozen layers only.
  """
  parts = {"format": _FORMAT, "stop_layer": config.model.trainable_from,
           "pooling": config.model.pooling, "width": config.model.width,
           "pooled_size": config.model.pooled_size, "dtype": config.model.dtype,
           "image_size": config.data.image_size,
           "preprocessing": dataclasses.asdict(preprocessing), "num_items": len(source),
           "layers": sorted(frozen_params)}
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode())
  for layer in sorted(frozen_params):
    for name in ("kernel", "bias"):
      digest.update(np.ascontiguousarray(np.asarray(frozen_params[layer][name],
                                                    np.float32)).tobytes())
  for i in range(len(source)):
    image = np.ascontiguousarray(source[i]["image"], np.uint8)
    digest.update(np.asarray(image.shape, np.int64).tobytes())
    digest.update(image.tobytes())
  return digest.hexdigest(), parts


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.model.prefix_cache_dir or os.path.join(workdir, CACHE_FOLDER)


def _write(path: str, outputs: np.ndarray, parts: Dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npy"
  np.save(tmp, outputs)
  os.replace(tmp, path)
  with open(f"{path[:-len('.npy')]}.json.{os.getpid()}.tmp", "w") as f:
    json.dump(parts, f, indent=2, sort_keys=True)
  os.replace(f"{path[:-len('.npy')]}.json.{os.getpid()}.tmp", f"{path[:-len('.npy')]}.json")


def _readable(path: str, num_items: int) -> bool:
  try:
    outputs = np.load(path, mmap_mode="r")
  except (OSError, ValueError):
    return False
  return outputs.dtype == np.float32 and len(outputs) == num_items


def load_or_build(config: ml_collections.ConfigDict, workdir: str, source, params,
                  preprocessing: Preprocessing, mesh: jax.sharding.Mesh) -> PrefixSource:
  """The prefix outputs of every item of the image `source` under the run's frozen layers.

  Args:
    config: the run's config (model.trainable_from set).
    workdir: the run's folder (the default cache folder is under it).
    source: the run's image source.
    params: the whole network's parameters (those of the frozen layers are read).
    preprocessing: the pixel normalisation the network sees.
    mesh: devices to compute on (eval batches of config.eval.batch_size).

  Returns:
    A PrefixSource over the cached outputs (memory-mapped), with the source's labels.
  """
  frozen = {layer: jax.device_get(params["backbone"][layer])
            for layer in experiment.frozen_layers(config)}
  key, parts = cache_key(frozen, preprocessing, config, source)
  path = os.path.join(cache_dir(config, workdir), f"prefix-{key[:32]}.npy")
  found = _readable(path, len(source))
  if jax.process_count() > 1:  # Every process must take the same branch: building is collective.
    found = bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
  if found:
    logging.info("Frozen prefix (below %s): reusing %s.", config.model.trainable_from, path)
    return PrefixSource(np.load(path, mmap_mode="r"), source.labels)
  model = prefix_model(config)
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False),
                    out_shardings=parallel.batch_sharding(mesh))
  outputs = inference.outputs_for(
      forward, parallel.replicate(mesh, frozen), source, np.arange(len(source)), "prefix",
      mesh=mesh, batch_size=config.eval.batch_size, image_size=config.data.image_size,
      preprocessing=preprocessing,
      description=f"frozen prefix (the layers below {config.model.trainable_from})")
  if jax.process_index() == 0:
    _write(path, outputs, parts)
    logging.info("Frozen prefix (below %s): %s of %s written to %s.",
                 config.model.trainable_from, outputs.shape, outputs.dtype, path)
  return PrefixSource(outputs, source.labels)
