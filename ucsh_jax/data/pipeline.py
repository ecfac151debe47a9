"""grain pipelines: endless shuffled host-sharded training batches; one padded pass for evaluation.

Training order: epoch e visits train_idx in the order `default_rng([seed, e]).permutation(n)`;
global step t of an epoch is positions [t * B, (t + 1) * B) of that order (B = global_batch_size)
and host p of P takes the p-th contiguous slice of B // P of it. So the union over hosts of step t
is the same global batch whatever P is. steps_per_epoch = len(train_idx) // global_batch_size
(the last partial batch of an epoch is dropped).
"""

from typing import Iterator, Optional, Tuple

import math

from absl import flags
import grain
import jax
import numpy as np

from ucsh_jax import errors
from ucsh_jax.data import images
from ucsh_jax.preprocessing import Preprocessing

# Threads (per process) that each assemble a whole batch; as many batches are buffered ahead.
_READ_THREADS = 8


def _shard(shard: Optional[Tuple[int, int]]) -> Tuple[int, int]:
  index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
  if not 0 <= index < count:
    raise ValueError(f"shard=({index}, {count}): need 0 <= process_index < process_count")
  return index, count


class _TrainPosition:
  """Element i of the host stream -> position in train_idx (see the module docstring)."""

  def __init__(self, n: int, global_batch: int, host_batch: int, host: int, seed: int):
    self.n, self.global_batch, self.host_batch, self.host, self.seed = (
        n, global_batch, host_batch, host, seed)
    self.per_epoch = (n // global_batch) * host_batch
    self._cache = (-1, None)  # (epoch, its permutation); replaced whole, so safe across threads.

  def __call__(self, i: int, _) -> int:
    epoch, j = divmod(i, self.per_epoch)
    cached_epoch, order = self._cache
    if cached_epoch != epoch:
      order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      self._cache = (epoch, order)
    step, k = divmod(j, self.host_batch)
    return int(order[step * self.global_batch + self.host * self.host_batch + k])


class _Load:
  """Position in `indices` (-1: padding) -> {"image": uint8 (S, S, 3) | "features", "index",
  ["label", "mask"]}."""

  def __init__(self, source, indices: np.ndarray, image_size: int, with_label: bool):
    self.source, self.indices, self.image_size, self.with_label = (
        source, np.asarray(indices, np.int64), image_size, with_label)

  def __call__(self, position: int) -> dict:
    pad = position < 0
    example = self.source[int(self.indices[0 if pad else position])]
    if self.source.kind == "image":
      out = {"image": images.resize(example["image"], self.image_size)}
    else:
      out = {"features": np.asarray(example["features"], np.float32)}
    if self.with_label:
      out["label"] = np.asarray(example["label"], np.int32)
      out["mask"] = np.bool_(not pad)
    if pad:
      out = {k: np.zeros_like(v) for k, v in out.items()}
    out["index"] = np.int32(position)
    return out


class _Normalise:
  """Batched uint8 RGB images -> float32, equal bit for bit to `preprocessing.apply`.

  Per output channel a 256-entry table made with `preprocessing.apply` itself is indexed by the
  pixels; several times faster than numpy broadcasting over a last axis of 3.
  """

  def __init__(self, preprocessing: Optional[Preprocessing]):
    if preprocessing is None:  # A feature source: batches hold no images.
      return
    ramp_256x3 = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    self.table_256x3 = preprocessing.apply(ramp_256x3)
    # Output channel c is computed from input channel source[c].
    self.source = (2, 1, 0) if preprocessing.channel_order == "BGR" else (0, 1, 2)

  def __call__(self, batch: dict) -> dict:
    if "image" not in batch:
      return batch
    pixels = batch["image"]
    out = np.empty(pixels.shape, np.float32)
    for c, k in enumerate(self.source):
      out[..., c] = self.table_256x3[:, c][pixels[..., k]]
    return dict(batch, image=out)


def _finish(ds: grain.MapDataset, source, batch_size: int,
            preprocessing: Optional[Preprocessing], num_workers: int) -> grain.DatasetIterator:
  if source.kind == "image" and preprocessing is None:
    raise ValueError("an image source needs a Preprocessing (None is for feature sources only)")
  # Batching before to_iter_dataset makes each element a whole batch, so worker processes (which
  # take every num_workers-th element) interleave whole batches and the order does not depend on
  # num_workers.
  it = ds.batch(batch_size, drop_remainder=True).map(_Normalise(preprocessing)).to_iter_dataset(
      grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_THREADS))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18 workers read absl flags, which raises outside an absl app (grain issue #1355).
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


def train_iterator(source, train_idx: np.ndarray, *, global_batch_size: int, image_size: int,
                   preprocessing: Optional[Preprocessing], seed: int, num_workers: int = 0,
                   shard: Optional[Tuple[int, int]] = None) -> grain.DatasetIterator:
  """Endless host-local training batches (see the module docstring for the order).

  Yields {"image": float32 (b, image_size, image_size, 3) normalised by `preprocessing`, or
  "features": float32 (b, d) for a feature source, where `preprocessing` and `image_size` are
  ignored (None is fine); "index": int32 (b,) positions in train_idx},
  b = global_batch_size // process_count. The iterator is checkpointable (`get_state()` /
  `set_state()`, `grain.checkpoint.CheckpointSave/CheckpointRestore`). `shard` =
  (process_index, process_count), by default jax's. num_workers > 0 decodes in that many
  processes.
  """
  host, hosts = _shard(shard)
  n = len(train_idx)
  if global_batch_size <= 0 or global_batch_size % hosts:
    raise errors.UserError(
        f"global_batch_size={global_batch_size} must be a positive multiple of the "
        f"process count {hosts}")
  if n < global_batch_size:
    raise errors.UserError(
        f"{n} training images are fewer than one global batch of {global_batch_size}")
  host_batch = global_batch_size // hosts
  position = _TrainPosition(n, global_batch_size, host_batch, host, seed)
  ds = (grain.MapDataset.range(position.per_epoch).repeat()
        .map_with_index(position).map(_Load(source, train_idx, image_size, with_label=False)))
  return _finish(ds, source, host_batch, preprocessing, num_workers)


def eval_batches(source, indices: np.ndarray, *, batch_size: int, image_size: int,
                 preprocessing: Optional[Preprocessing], num_workers: int = 0,
                 shard: Optional[Tuple[int, int]] = None) -> Iterator[dict]:
  """One ordered pass over this host's contiguous slice of `indices`, the last batch padded.

  Host p of P takes positions [p * m, (p + 1) * m) with m = ceil(len(indices) / P); every host
  yields ceil(m / batch_size) batches. Each batch: "image" float32 (batch_size, S, S, 3) (or
  "features" (batch_size, d)), "label" int32 (batch_size,) or (batch_size, c), "mask" bool
  (False for padding), "index" int32 positions in `indices`. Padding rows have index -1, label 0,
  zero features or a black image (normalised).
  """
  host, hosts = _shard(shard)
  n = len(indices)
  if n == 0 or batch_size <= 0:
    raise ValueError(f"need a non-empty index set and a positive batch_size, got {n} indices and "
                     f"batch_size={batch_size}")
  per_host = math.ceil(n / hosts)
  num_batches = math.ceil(per_host / batch_size)
  start, stop = host * per_host, min((host + 1) * per_host, n)
  positions = np.full(num_batches * batch_size, -1, np.int64)
  positions[:max(stop - start, 0)] = np.arange(start, stop)
  ds = grain.MapDataset.source(positions).map(_Load(source, indices, image_size, with_label=True))
  return _finish(ds, source, batch_size, preprocessing, num_workers)
