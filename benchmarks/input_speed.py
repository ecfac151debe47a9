"""Images/s of the training input pipeline: read, PNG decode, resize, normalise, batch.

  python benchmarks/input_speed.py [--workers=0,2,4] [--image_size=224] [--batch_size=24]

CIFAR-like data is made here (random 32x32 images in the official archive layout), prepared
through the real tfds builder into a temporary data_dir and read back with `tfds.data_source`,
so every stage of a CIFAR-10 run is timed. Ratios are against the in-process row (0 workers).
"""

import io
import os
import pickle
import sys
import tarfile
import tempfile
import time

from absl import app
from absl import flags
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ucsh_jax import data  # pylint: disable=g-import-not-at-top
from ucsh_jax.data import cifar10  # pylint: disable=g-import-not-at-top
from ucsh_jax.preprocessing import IMAGENET  # pylint: disable=g-import-not-at-top

_WORKERS = flags.DEFINE_list("workers", ["0", "2", "4"], "grain worker process counts to time.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Resize target.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 24, "Host batch size.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 3000, "Images in the made-up archive.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Timed seconds per row (after one warm-up batch).")


def write_archive(path: str, num_images: int) -> None:
  """A CIFAR-10 python archive of random images: 5 train batches and a test batch."""
  rng = np.random.default_rng(0)
  per_batch = num_images // 6
  with tarfile.open(path, "w:gz") as tar:
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
      batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
               b"labels": rng.integers(0, 10, per_batch).tolist()}
      payload = pickle.dumps(batch, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


def images_per_second(source, num_workers: int) -> float:
  it = data.train_iterator(source, np.arange(len(source)), global_batch_size=_BATCH_SIZE.value,
                           image_size=_IMAGE_SIZE.value, preprocessing=IMAGENET, seed=0,
                           num_workers=num_workers, shard=(0, 1))
  next(it)  # Warm-up: starts the workers and fills the prefetch buffers.
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < _SECONDS.value:
    count += len(next(it)["index"])
  rate = count / (time.perf_counter() - start)
  it.close()
  return rate


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "manual"))
    write_archive(os.path.join(tmp, "manual", cifar10.ARCHIVE), _NUM_IMAGES.value)
    source = data.get_source(ml_collections.ConfigDict(dict(
        name="cifar10", manual_dir=os.path.join(tmp, "manual"), data_dir=os.path.join(tmp, "tfds"),
        skip_corrupt=False)))
    print(f"\n{len(source)} CIFAR-like images (PNG in ArrayRecord), resized to "
          f"{_IMAGE_SIZE.value}x{_IMAGE_SIZE.value}, ImageNet normalisation, host batch "
          f"{_BATCH_SIZE.value}, {os.cpu_count()} CPUs")
    print(f"{'workers':>8} {'images/s':>10} {'ms/image':>9} {'vs 0 workers':>13}")
    reference = None
    for workers in map(int, _WORKERS.value):
      rate = images_per_second(source, workers)
      reference = reference or rate
      print(f"{workers:>8} {rate:>10.0f} {1e3 / rate:>9.3f} {rate / reference:>12.2f}x")


if __name__ == "__main__":
  app.run(main)
