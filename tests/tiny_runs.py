"""Tiny trained runs for the tests of the tools that read a workdir (search, serve).

Each is trained, recorded (`run.json`) and encoded (`codes.npz` and the database index) like
`python -m ucsh_jax.main` would, in a few seconds: no VGG16, the pixels hashed directly.
`traces()` counts the JAX functions traced (so compiled) meanwhile.
"""

import contextlib
import os

import jax
import numpy as np
import PIL.Image

from configs import digits as digits_config
from configs import features as features_config
from ucsh_jax import run_record
from ucsh_jax import train

# Recorded by JAX each time it traces a function for compilation.
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
# Per class of the image folder: the colour its pictures are drawn in.
COLOURS = {"blue": (30, 60, 230), "green": (30, 200, 60), "red": (230, 40, 30)}


def _small(config):
  config.num_epochs = 2
  config.bits = 16
  config.batch_size = 16
  config.num_clusters = 4
  config.kmeans_iters = 5
  config.threshold_samples = 128
  config.model.decoder_hidden = 16
  config.eval.batch_size = 64
  config.log_every_steps = 100
  return config


def digits_run(workdir: str):
  """The digits demo, smaller: 40 queries, 160 database items, 64 training images."""
  config = _small(digits_config.get_config())
  config.data.num_query, config.data.num_train, config.data.num_database = 40, 64, 160
  return _train_and_encode(config, workdir)


def write_image_folder(root: str, per_class: int = 36) -> None:
  """root/<class>/<i>.jpg: noisy 24x32 pictures of a coloured square on grey, per class colour."""
  rng = np.random.default_rng(0)
  for name, colour in COLOURS.items():
    os.makedirs(os.path.join(root, name))
    for i in range(per_class):
      pixels = np.full((24, 32, 3), 128, np.float32) + rng.normal(0, 12, (24, 32, 3))
      top, left = rng.integers(0, 8), rng.integers(0, 16)
      pixels[top:top + 16, left:left + 16] = colour
      image = PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
      image.save(os.path.join(root, name, f"{i}.jpg"), quality=90)


def image_folder_run(root: str, workdir: str):
  """An image-folder run on `write_image_folder(root)`: 8 queries, 100 database items."""
  write_image_folder(root)
  config = _small(digits_config.get_config())
  config.data.name, config.data.path = "image_folder", root
  config.data.num_query, config.data.num_train = 8, 16
  return _train_and_encode(config, workdir)


def features_run(root: str):
  """A run on a multi-label feature file root/data.npz (150 x 12, 4 labels): 20 queries.

  Returns (workdir, features (150, 12) float32, labels (150, 4) int32).
  """
  rng = np.random.default_rng(0)
  labels = (rng.random((150, 4)) < 0.4).astype(np.int32)
  labels[labels.sum(1) == 0, 0] = 1
  features = (labels @ rng.random((4, 12)) + 0.05 * rng.random((150, 12))).astype(np.float32)
  np.savez(os.path.join(root, "data.npz"), features=features, labels=labels)
  config = features_config.get_config()
  config.data.path = os.path.join(root, "data.npz")
  config.data.num_query, config.data.num_train = 20, 32
  config.num_epochs, config.batch_size, config.eval.batch_size = 1, 16, 32
  config.bits, config.num_clusters, config.model.decoder_hidden = 8, 4, 16
  workdir = os.path.join(root, "run")
  _train_and_encode(config, workdir)
  return workdir, features, labels


def _train_and_encode(config, workdir: str):
  run_record.check_or_write(config, workdir, config_file=None)
  train.train_and_evaluate(config, workdir)
  train.evaluate_checkpoint(config, workdir, write_codes=True)
  return config


@contextlib.contextmanager
def traces():
  """Yields a list that collects one entry per function JAX traces inside the block."""
  traced = []

  def listener(event, duration_s, **kwargs):
    del duration_s, kwargs
    if event == _TRACE_EVENT:
      traced.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield traced
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
