"""Feature files: the `.npz` that `configs/features.py` and the baselines read, and its writer.

  features      (n, d) float32   one row per item
  labels        (n,) int32 or (n, c) multi-hot
  ids           (n,) int64       each row's position in the data set it was extracted from
  query_idx, database_idx, train_idx   int64 row positions of the splits
  provenance    str              which parameters produced the features

`--mode=features` (every item of the data set) and `ucsh_jax.baselines --save_features` (the
query and database rows) both write through `write`.
"""

import os

import numpy as np

from ucsh_jax.data import splits as splits_lib


def write(path: str, features: np.ndarray, labels: np.ndarray, ids: np.ndarray,
          splits: splits_lib.Splits, provenance: str) -> None:
  """Writes a feature file atomically (a temporary file, then a rename).

  Args:
    path: the `.npz` to write.
    features: (n, d) float, row r describes the data set's item `ids[r]`.
    labels: (n,) or (n, c), the labels of the same rows.
    ids: (n,) distinct data set positions of the rows.
    splits: the run's splits as data set positions; every one must be among `ids`.
    provenance: a sentence saying which parameters produced the features.
  """
  ids = np.asarray(ids, np.int64)
  if not len(features) == len(labels) == len(ids):
    raise ValueError(f"{len(features)} features, {len(labels)} labels and {len(ids)} ids")
  order = np.argsort(ids)
  rows = {}
  for name, positions in zip(splits_lib.SPLIT_NAMES, splits):
    found = np.searchsorted(ids, positions, sorter=order)
    found = order[np.minimum(found, len(ids) - 1)]
    if not np.array_equal(ids[found], positions):
      raise ValueError(f"the {name} split has items that are not among the rows")
    rows[f"{name}_idx"] = found.astype(np.int64)
  tmp = f"{path}.{os.getpid()}.tmp.npz"
  np.savez(tmp, features=np.asarray(features, np.float32), labels=np.asarray(labels),
           ids=ids, provenance=np.asarray(provenance), **rows)
  os.replace(tmp, path)
