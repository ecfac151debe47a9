"""Precomputed features in an `.npz` file as a dataset."""

from typing import Dict, Tuple

import numpy as np

from ucsh_jax import errors
from ucsh_jax import npz

SPLIT_KEYS = ("query_idx", "database_idx", "train_idx")


def check_labels(labels: np.ndarray, features_shape: Tuple[int, ...], path: str) -> np.ndarray:
  """`labels` as int32 if they are int (n,) or multi-hot 0/1 (n, c) for the n rows of 'features'
  (of shape `features_shape`) in the file `path`, else a UserError naming the file (float
  labels are refused, not cast)."""
  if labels.ndim not in (1, 2) or labels.dtype.kind not in "iub":
    raise errors.UserError(
        f"{path}: 'labels' must be int (n,) or multi-hot (n, c), got {labels.dtype} "
        f"{labels.shape}")
  if len(labels) != features_shape[0]:
    raise errors.UserError(
        f"{path}: 'features' {tuple(features_shape)} and 'labels' {labels.shape} have "
        "different lengths")
  if labels.ndim == 2 and not np.isin(labels, (0, 1)).all():
    row = int(np.flatnonzero(~np.isin(labels, (0, 1)).all(axis=1))[0])
    raise errors.UserError(
        f"{path}: multi-hot 'labels' must hold only 0 and 1; row {row} is {labels[row]}")
  return labels.astype(np.int32)


class FeatureSource:
  """Features from an `.npz` with `features` (n, d) float and `labels` (n,) int or (n, c) multi-hot.

  Refused (UserError naming the file and the first row at fault): rows with NaN or inf, and
  rows of all zeros (their cosine similarity to anything is undefined).

  Optional `query_idx`, `database_idx`, `train_idx` (int index arrays into the n rows) are kept in
  `given_splits` and used by `make_splits` instead of drawing those sets.
  `source[i]` is {"features": float32 (d,), "label": int32 () or (c,)}.
  """

  kind = "features"

  def __init__(self, path: str):
    if not path:
      raise errors.UserError("no feature file given: set --config.data.path=FILE.npz")
    arrays = npz.read(path, "feature file", required=("features", "labels"))
    features, labels = arrays["features"], arrays["labels"]
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
      raise errors.UserError(
          f"{path}: 'features' must be a numeric (n, d) array, got {features.dtype} "
          f"{features.shape}")
    self.labels = check_labels(labels, features.shape, path)
    self.features = features.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(self.features).all(axis=1))
    if len(bad_rows):
      raise errors.UserError(
          f"{path}: 'features' row {bad_rows[0]} holds NaN or inf (or a value too large for "
          f"float32); {len(bad_rows)} row(s) in all")
    zero_rows = np.flatnonzero(~self.features.any(axis=1))
    if len(zero_rows):
      raise errors.UserError(
          f"{path}: 'features' row {zero_rows[0]} is all zeros, which has no direction (its "
          f"cosine similarity, from which the training targets come, is undefined); "
          f"{len(zero_rows)} such row(s) in all",
          hint="drop those rows, or give them a feature that describes the item")
    self.given_splits: Dict[str, np.ndarray] = {
        key: np.asarray(arrays[key]) for key in SPLIT_KEYS if key in arrays}
    self.path = path

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"features": self.features[i], "label": self.labels[i]}
