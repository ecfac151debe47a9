"""Search a trained run's codes by image or feature vector: the core of `search` and `serve`.

  searcher = Searcher.from_workdir(workdir)               # the run's database and its index
  codes_QxK = searcher.encode_images([pixels_HxWx3, ...]) # or encode_features(features_QxD)
  for hits in searcher.search(codes_QxK, k=10): ...       # [{"id", "distance", "label", "path"}]

The model is rebuilt from the run's recorded config and restored from its latest checkpoint on
the first encoding (a search by `run_query(n)`, the n-th query of the run's own split, reads
the codes that `--mode=encode` wrote and needs no model). Every encoding goes through one
jitted forward pass at a fixed batch of `batch_size` rows (inputs padded), so it compiles once.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import dataclasses
import hashlib
import os

from absl import logging
import numpy as np

from ucsh_jax import checkpointing
from ucsh_jax import errors
from ucsh_jax import evaluate
from ucsh_jax import index as index_lib
from ucsh_jax import inference
from ucsh_jax import npz
from ucsh_jax import parallel
from ucsh_jax import run_record
from ucsh_jax import train
from ucsh_jax.data import features as features_lib
from ucsh_jax.data import folders
from ucsh_jax.data import images

# Rows of the one compiled forward pass (rounded up to a multiple of the device count).
MIN_BATCH = 8
CACHE_DIR = "search_cache"  # Under the workdir: indexes of other collections (--database).


class ImageFiles:
  """Unlabelled image files as a data source (a user's own photos, a folder of queries).

  `source[i]` is {"image": uint8 (H, W, 3) RGB, "label": int32 -1 (no label)}; `labels` is None.
  """

  kind = "image"
  labels = None

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict:
    return {"image": read_image(self.paths[i]), "label": np.int32(-1)}


class FeatureRows:
  """Feature vectors (n, d) float32 with optional labels, as a data source."""

  kind = "features"

  def __init__(self, features_NxD: np.ndarray, labels: Optional[np.ndarray], path: str):
    self.features, self.labels, self.path = features_NxD, labels, path

  def __len__(self) -> int:
    return len(self.features)

  def __getitem__(self, i: int) -> dict:
    label = self.labels[i] if self.labels is not None else np.int32(-1)
    return {"features": self.features[i], "label": label}


def list_images(folder: str) -> List[str]:
  """Image files (by extension) under `folder`, recursively, in sorted path order."""
  found = []
  for directory, subfolders, files in os.walk(folder):
    subfolders.sort()
    found += [os.path.join(directory, f) for f in sorted(files)
              if f.lower().endswith(folders.EXTENSIONS)]
  if not found:
    raise errors.UserError(f"no images ({', '.join(folders.EXTENSIONS)}) under {folder}")
  return found


def read_image(path: str) -> np.ndarray:
  """A query image file -> uint8 RGB (H, W, 3); CorruptImageError (a UserError) names a file that
  cannot be read or decoded, or that has more than images.MAX_QUERY_PIXELS pixels."""
  return images.decode_rgb(images.read_file(path), path, images.MAX_QUERY_PIXELS)


def read_features(path: str) -> FeatureRows:
  """A `.npz` with `features` (n, d), n >= 1 (and optionally `labels`, checked as training
  checks them: `features.check_labels`); problems are UserErrors."""
  arrays = npz.read(path, "feature file")
  features = arrays.get("features")
  if features is None or features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
    raise errors.UserError(f"{path} needs a numeric (n, d) array 'features'")
  if len(features) == 0:
    raise errors.UserError(f"{path} holds no feature vectors ('features' has shape "
                           f"{features.shape})")
  bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
  if bad.size:
    raise errors.UserError(f"{path}: row {bad[0]} of 'features' is not finite")
  labels = arrays.get("labels")
  if labels is not None:
    labels = features_lib.check_labels(labels, features.shape, path)
  return FeatureRows(features.astype(np.float32), labels, path)


def label_value(labels: Optional[np.ndarray], i: int) -> Any:
  """A label for JSON: an int, the positive classes of a multi-hot row, or None (unlabelled)."""
  if labels is None:
    return None
  label = np.asarray(labels[i])
  return int(label) if label.ndim == 0 else [int(c) for c in np.flatnonzero(label)]


def item_path(source, i: int) -> Optional[str]:
  """The file of item `i`, or None for data without files (arrays, tfds records, features)."""
  paths = getattr(source, "paths", None)
  return paths[i] if paths is not None else None


@dataclasses.dataclass
class Collection:
  """What a search ranks: a data source and its codes in a Hamming index (ids = positions in
  `source`)."""
  source: Any
  index: index_lib.HammingIndex


class Searcher:
  """A run's model and preprocessing, and the collection its searches rank."""

  def __init__(self, run: train.Run, collection: Collection):
    self.run = run
    self.collection = collection
    self.kind = run.source.kind
    self.bits = int(run.config.bits)
    mesh_size = run.mesh.size
    self.batch_size = mesh_size * -(-MIN_BATCH // mesh_size)
    self._forward = None
    self._params = None
    self._checkpoint_step = None

  @classmethod
  def from_workdir(cls, workdir: str, *, database: Optional[str] = None) -> "Searcher":
    """The run in `workdir`, searching its database (or the folder/.npz `database`).

    `database` is encoded on first use (with a progress line) and its index cached in
    WORKDIR/search_cache/, keyed by its files and the checkpoint (not cached, with a warning,
    when the workdir cannot be written).
    """
    config = run_record.load_config(workdir)
    run = train.setup(config, workdir, restoring=True, prefix_cache=False)
    searcher = cls(run, run_database(run))
    if database is not None:
      searcher.collection = searcher.cached_collection(database)
    return searcher

  @property
  def input_dim(self) -> int:
    """The width d of the feature vectors a features run hashes."""
    return int(np.asarray(self.run.source[0]["features"]).shape[-1])

  def _ensure_model(self) -> None:
    if self._forward is None:
      self._checkpoint_step = latest_step(self.run.workdir)
      self._params = train.restore_params(self.run)
      self._forward = inference.make_forward(self.run.model, self.run.mesh)

  def _encode(self, inputs: np.ndarray) -> np.ndarray:
    """Network inputs (n, ...) float32 -> codes (n, bits) int8 +-1, `batch_size` rows a call."""
    self._ensure_model()
    n = len(inputs)
    padded = np.zeros((-(-n // self.batch_size) * self.batch_size,) + inputs.shape[1:],
                      np.float32)
    padded[:n] = inputs
    codes = []
    for start in range(0, len(padded), self.batch_size):
      batch = parallel.global_batch(self.run.mesh, padded[start:start + self.batch_size])
      codes.append(parallel.to_host(self._forward(self._params, batch)["codes"]))
    return np.concatenate(codes)[:n]

  def encode_images(self, images_list: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 RGB images (H_i, W_i, 3), any sizes -> codes (n, bits) int8 +-1.

    Each image is resized and normalised exactly as the run's evaluation pipeline does.
    """
    if self.kind != "image":
      raise errors.UserError(
          f"this run hashes feature vectors of width {self.input_dim}, not images: give a "
          "features .npz as the query")
    size = self.run.config.data.image_size
    resized = np.stack([images.resize(np.asarray(im, np.uint8), size) for im in images_list])
    return self._encode(self.run.preprocessing.apply(resized))

  def check_features(self, shape: Sequence[int], what: str) -> None:
    """UserError unless this is a features run and `shape` is (n, d) with its width d."""
    if self.kind != "features":
      raise errors.UserError(f"this run hashes images, not feature vectors ({what}): give an "
                             "image file or a folder of images")
    if len(shape) != 2 or shape[1] != self.input_dim:
      raise errors.UserError(f"{what} has shape {tuple(shape)}; this run hashes vectors of "
                             f"width {self.input_dim}")

  def encode_features(self, features_NxD: np.ndarray) -> np.ndarray:
    """Feature vectors (n, d) -> codes (n, bits) int8 +-1 (a features run only)."""
    features_NxD = np.asarray(features_NxD, np.float32)
    self.check_features(features_NxD.shape, "the query features")
    return self._encode(features_NxD)

  def run_query(self, n: int) -> Tuple[Dict[str, Any], np.ndarray]:
    """The n-th query of the run's query split: (its "query" object for a search answer,
    its code (1, bits) int8 as `--mode=encode` wrote it to codes.npz)."""
    num_query = len(self.run.splits.query)
    if not 0 <= n < num_query:
      raise errors.UserError(f"query index {n} is outside the run's {num_query} queries "
                             f"(0..{num_query - 1})")
    item = int(self.run.splits.query[n])
    codes = load_codes(self.run.workdir)
    if "query_ids" in codes and int(codes["query_ids"][n]) != item:
      raise errors.UserError(f"{self.run.workdir}/codes.npz does not match the run's splits",
                             hint=_ENCODE_HINT)
    description = {"name": f"query {n} of the run", "id": item,
                   "label": label_value(self.run.source.labels, item),
                   "path": item_path(self.run.source, item)}
    return description, np.asarray(codes["query_codes"][n:n + 1], np.int8)

  def search(self, codes_QxK: np.ndarray, k: int) -> List[List[Dict[str, Any]]]:
    """Per query, the k nearest items of the collection: [{"id", "distance", "label", "path"}].

    Ranked by Hamming distance, ties by id; k is capped at the collection's size.
    """
    if k < 1:
      raise errors.UserError(f"topk must be at least 1, got {k}")
    index, source = self.collection.index, self.collection.source
    distances_QxK, ids_QxK = index.search(np.asarray(codes_QxK), min(k, index.ntotal))
    return [[{"id": int(i), "distance": int(d), "label": label_value(source.labels, int(i)),
              "path": item_path(source, int(i))}
             for d, i in zip(distances, ids) if i >= 0]
            for distances, ids in zip(distances_QxK, ids_QxK)]

  def cached_collection(self, path: str) -> Collection:
    """The folder of images or features .npz at `path`, with its index (built and cached once)."""
    if not os.path.exists(path):
      raise errors.UserError(f"--database {path} does not exist")
    if os.path.isdir(path):
      source = ImageFiles(list_images(path))
      if self.kind != "image":
        raise errors.UserError(f"this run hashes feature vectors; --database {path} is a folder "
                               "of images")
    else:
      source = read_features(path)
      self.check_features(source.features.shape, f"'features' of {path}")
    self._ensure_model()
    cache = os.path.join(self.run.workdir, CACHE_DIR,
                         f"{os.path.basename(path.rstrip(os.sep))}-"
                         f"{collection_digest(path, source, self._checkpoint_step)}.index")
    if os.path.exists(cache):
      return Collection(source, index_lib.HammingIndex.load(cache, bits=self.bits))
    index = index_lib.HammingIndex.from_codes(self._encode_source(source, f"encoding {path}"))
    try:
      os.makedirs(os.path.dirname(cache), exist_ok=True)
      index.save(cache)
    except OSError as e:  # A run the user may read but not write: search it all the same.
      logging.warning("not caching the index of %s in %s (%s): it is encoded again next time",
                      path, os.path.dirname(cache), e.strerror or e)
    return Collection(source, index)

  def _encode_source(self, source, description: str) -> np.ndarray:
    """Codes (len(source), bits) int8 of every item, images read and decoded on threads; logs a
    progress line."""
    self._ensure_model()
    try:
      return inference.outputs_for(
          self._forward, self._params, source, np.arange(len(source)), "codes",
          mesh=self.run.mesh, batch_size=self.batch_size,
          image_size=self.run.config.data.image_size, preprocessing=self.run.preprocessing,
          description=description)
    except images.CorruptImageError as e:
      raise errors.UserError(str(e)) from e


_ENCODE_HINT = ("write the codes and the index with python -m ucsh_jax.main --mode=encode "
                "--workdir=WORKDIR")


def load_codes(workdir: str) -> Dict[str, np.ndarray]:
  """The arrays of WORKDIR/codes.npz (UserError when `--mode=encode` has not written it)."""
  path = os.path.join(workdir, "codes.npz")
  if not os.path.exists(path):
    raise errors.UserError(f"{workdir} has no codes.npz", hint=_ENCODE_HINT)
  return npz.read(path, "the codes file", required=("query_codes",), hint=_ENCODE_HINT)


def latest_step(workdir: str) -> int:
  """The step of the workdir's latest finished checkpoint (UserError when there is none)."""
  step = checkpointing.latest_saved_step(train.checkpoint_dir(workdir))
  if step is None:
    raise errors.UserError(f"{workdir} has no checkpoint: train first (python -m ucsh_jax.main "
                           f"--workdir={workdir})")
  return step


def run_database(run: train.Run) -> Collection:
  """The run's own database: the index that `--mode=encode` wrote next to codes.npz."""
  path = os.path.join(run.workdir, evaluate.INDEX_NAME)
  if not os.path.exists(path):
    raise errors.UserError(f"{run.workdir} has no database index ({evaluate.INDEX_NAME})",
                           hint=_ENCODE_HINT)
  index = index_lib.HammingIndex.load(path, bits=int(run.config.bits))
  if index.ntotal != len(run.splits.database):
    raise errors.UserError(f"{path} holds {index.ntotal} codes but the run's database has "
                           f"{len(run.splits.database)} items", hint=_ENCODE_HINT)
  step = latest_step(run.workdir)
  checkpoint = os.path.join(train.checkpoint_dir(run.workdir), str(step))
  if os.path.getmtime(path) < os.path.getmtime(checkpoint):
    logging.warning("%s is older than checkpoint %d: its codes may be out of date (run "
                    "--mode=encode again)", path, step)
  return Collection(run.source, index)


def collection_digest(path: str, source, step: int) -> str:
  """A short hash of a collection's files (names, sizes, times) and the checkpoint step."""
  digest = hashlib.sha256(f"{os.path.abspath(path)}\n{step}\n".encode())
  for file in getattr(source, "paths", None) or [path]:
    stat = os.stat(file)
    digest.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


