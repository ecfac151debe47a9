"""Protocol splits (query / database / training), deterministic from a seed, saved in the workdir.

Single-label data (labels (n,)): the query set is stratified per class (num_query // classes each,
one more for the first num_query % classes classes), the database is the rest, the training set is
stratified the same way from the database. Multi-label data (labels (n, c)): images with no label
are dropped, then query and training sets are uniform random draws. num_database = -1 keeps all the
rest (else a uniform random subset); num_train = -1 trains on the whole database.
Draws use `np.random.default_rng(seed)` in the order query, database, train.
"""

from typing import Dict, NamedTuple, Optional

import json
import os
import zipfile

from absl import logging
import jax
import ml_collections
import numpy as np

from ucsh_jax import errors

SPLIT_NAMES = ("query", "database", "train")


class Splits(NamedTuple):
  """Sorted int64 index arrays into the source; train is a subset of database."""

  query: np.ndarray
  database: np.ndarray
  train: np.ndarray


def _stratified(rng: np.random.Generator, candidates: np.ndarray, labels: np.ndarray,
                total: int, what: str) -> np.ndarray:
  """`total` of `candidates`, spread evenly over the classes of `labels[candidates]`."""
  classes = np.unique(labels[candidates])
  per_class, extra = divmod(total, len(classes))
  chosen = []
  for j, c in enumerate(classes):
    members = candidates[labels[candidates] == c]
    k = per_class + (j < extra)
    if k > len(members):
      raise errors.UserError(
          f"{what}: class {c} has {len(members)} images, fewer than the {k} needed "
          f"for {total} spread over {len(classes)} classes")
    chosen.append(rng.permutation(members)[:k])
  return np.concatenate(chosen)


def _draw(rng, candidates, labels, total, what) -> np.ndarray:
  if total > len(candidates):
    raise errors.UserError(
        f"{what}: asked for {total} but only {len(candidates)} images are available")
  if labels.ndim == 1:
    return _stratified(rng, candidates, labels, total, what)
  return rng.permutation(candidates)[:total]


def protocol_splits(labels: np.ndarray, *, num_query: int, num_database: int, num_train: int,
                    seed: int, given: Optional[Dict[str, np.ndarray]] = None) -> Splits:
  """Draws the splits for `labels` ((n,) int or (n, c) multi-hot); see the module docstring.

  `given` may hold `query_idx`, `database_idx`, `train_idx` (a feature file's): those are used
  as they are; a missing database is the rest of the eligible images, a missing train set is drawn
  from the database.
  """
  given = given or {}
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  eligible = np.arange(len(labels)) if labels.ndim == 1 else np.flatnonzero(labels.any(axis=1))
  if "query_idx" in given:
    query = np.asarray(given["query_idx"], np.int64)
  else:
    if num_query <= 0:
      raise errors.UserError(f"num_query must be positive, got {num_query}")
    query = _draw(rng, eligible, labels, num_query, "query set")
  if "database_idx" in given:
    database = np.asarray(given["database_idx"], np.int64)
  else:
    database = np.setdiff1d(eligible, query)
    if num_database != -1:
      if not 0 < num_database <= len(database):
        raise errors.UserError(
            f"num_database={num_database} but {len(database)} images are left after "
            "the query set (-1 takes them all)")
      database = rng.permutation(database)[:num_database]
  if "train_idx" in given:
    train = np.asarray(given["train_idx"], np.int64)
  elif num_train == -1:
    train = database
  else:
    train = _draw(rng, database, labels, num_train, "training set (drawn from the database)")
  return Splits(*(np.sort(s).astype(np.int64) for s in (query, database, train)))


def check_splits(splits: Splits, num_examples: int, where: str) -> Splits:
  """Raises ValueError unless the splits are unique in-range indices, query and database are
  disjoint and train is a subset of database."""
  for name, idx in zip(SPLIT_NAMES, splits):
    if idx.ndim != 1 or len(idx) == 0:
      raise errors.UserError(f"{where}: {name} must be a non-empty 1-D index array, got shape "
                             f"{idx.shape}")
    if idx.min() < 0 or idx.max() >= num_examples:
      raise errors.UserError(
          f"{where}: {name} indices span [{idx.min()}, {idx.max()}] but the dataset "
          f"has {num_examples} examples")
    if len(np.unique(idx)) != len(idx):
      raise errors.UserError(f"{where}: {name} has repeated indices")
  if np.intersect1d(splits.query, splits.database).size:
    raise errors.UserError(f"{where}: query and database share "
                           f"{np.intersect1d(splits.query, splits.database).size} indices")
  if np.setdiff1d(splits.train, splits.database).size:
    raise errors.UserError(
        f"{where}: {np.setdiff1d(splits.train, splits.database).size} train indices "
        "are not in the database")
  return splits


def _save(splits: Splits, folder: str, num_examples: int, seed: int,
          fingerprint: Optional[str], drawn_with: Dict[str, object]) -> None:
  """Every file is written to a temporary name and renamed, info.json first: a reader that sees
  all three .npy files also sees a complete info.json."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "info.tmp.json"), "w") as f:
    json.dump({"num_examples": num_examples, "seed": seed, "fingerprint": fingerprint,
               "drawn_with": drawn_with}, f)
  os.replace(os.path.join(folder, "info.tmp.json"), os.path.join(folder, "info.json"))
  for name, idx in zip(SPLIT_NAMES, splits):
    np.save(os.path.join(folder, f"{name}.tmp.npy"), idx)
    os.replace(os.path.join(folder, f"{name}.tmp.npy"), os.path.join(folder, f"{name}.npy"))


def _load(folder: str, num_examples: int, fingerprint: Optional[str],
          drawn_with: Dict[str, object]) -> Optional[Splits]:
  """The saved splits, or None when they were drawn with other sizes, seed or splits file."""
  info_path = os.path.join(folder, "info.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      info = json.load(f)
    if info["num_examples"] != num_examples:
      raise errors.UserError(
          f"the splits in {folder} were made for a dataset of {info['num_examples']} examples "
          f"but this one has {num_examples}; use a new workdir or delete {folder}")
    if info.get("fingerprint") and fingerprint and info["fingerprint"] != fingerprint:
      raise errors.UserError(
          f"the splits in {folder} were made for other data (fingerprint "
          f"{info['fingerprint']}) than these ({fingerprint}); use a new workdir, or the data "
          "the splits were made for")
    saved_with = info.get("drawn_with")  # Absent from splits saved before it was recorded.
    if saved_with is not None and saved_with != drawn_with:
      changes = ", ".join(f"{k} {saved_with.get(k)!r} -> {v!r}" for k, v in drawn_with.items()
                          if saved_with.get(k) != v)
      logging.info("The splits in %s were drawn with other settings (%s): drawing them again.",
                   folder, changes)
      return None
  splits = Splits(*(np.load(os.path.join(folder, f"{n}.npy")).astype(np.int64)
                    for n in SPLIT_NAMES))
  return check_splits(splits, num_examples, folder)


def read_splits_file(path: str) -> Dict[str, np.ndarray]:
  """`query_idx`, `database_idx`, `train_idx` (int positions in the data set) of an .npz."""
  try:
    with np.load(path, allow_pickle=False) as f:
      given = {name: np.asarray(f[name]) for name in f.files}
  except FileNotFoundError as e:
    raise errors.UserError(f"data.splits_file {path} does not exist") from e
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise errors.UserError(f"data.splits_file {path} is not a readable .npz: {e}") from e
  names = ("query_idx", "database_idx", "train_idx")
  missing = [name for name in names if name not in given]
  if missing:
    raise errors.UserError(f"data.splits_file {path} lacks {', '.join(missing)} (it has "
                           f"{', '.join(sorted(given)) or 'no arrays'})")
  for name in names:
    if not np.issubdtype(given[name].dtype, np.integer):
      raise errors.UserError(f"data.splits_file {path}: {name} holds {given[name].dtype} values, "
                             "expected integer positions")
  return {name: given[name] for name in names}


def make_splits(data_config: ml_collections.ConfigDict, source, *, seed: int,
                workdir: Optional[str], redraw: bool = False) -> Splits:
  """Query / database / training indices into `source`, from `workdir/splits/` when saved there.

  Otherwise drawn with `protocol_splits` (sizes `data_config.num_query`, `num_database`,
  `num_train`; a feature file's own index arrays win), checked, and saved by process 0 as
  `workdir/splits/{query,database,train}.npy` plus `info.json` (dataset size, the source's
  fingerprint, the sizes, seed and splits file drawn with). Saved splits are checked against the
  dataset size and fingerprint, and drawn again (and saved over) when they were drawn with other
  sizes, seed or splits file: a run's record keeps those fixed for the run, so the saved ones
  are then the leftovers of a start that was refused, or of baselines with another config.
  `data_config.splits_file` (an .npz with query_idx, database_idx, train_idx) gives the splits
  instead of drawing them. workdir None: nothing is read or written. `redraw` ignores saved
  splits (a fresh start's: the leftovers of a start that saved nothing, on any data).
  """
  num_examples = len(source)
  fingerprint = getattr(source, "fingerprint", None)
  folder = os.path.join(workdir, "splits") if workdir else None
  splits_file = data_config.get("splits_file", "")
  drawn_with = {"num_query": int(data_config.num_query),
                "num_database": int(data_config.get("num_database", -1)),
                "num_train": int(data_config.num_train), "seed": int(seed),
                "splits_file": splits_file}
  if folder and not redraw and all(
      os.path.exists(os.path.join(folder, f"{n}.npy")) for n in SPLIT_NAMES):
    saved = _load(folder, num_examples, fingerprint, drawn_with)
    if saved is not None:
      return saved
  given = read_splits_file(splits_file) if splits_file else getattr(source, "given_splits", None)
  splits = protocol_splits(
      source.labels, num_query=drawn_with["num_query"], num_database=drawn_with["num_database"],
      num_train=drawn_with["num_train"], seed=seed, given=given)
  check_splits(splits, num_examples, splits_file or f"splits of {data_config.name}")
  if folder and jax.process_index() == 0:
    _save(splits, folder, num_examples, seed, fingerprint, drawn_with)
  return splits
