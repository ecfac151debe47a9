"""Precomputed features in an `.npz` file as a dataset."""

from typing import Dict

import numpy as np

from ucsh_jax import errors

SPLIT_KEYS = ("query_idx", "database_idx", "train_idx")


class FeatureSource:
  """Features from an `.npz` with `features` (n, d) float and `labels` (n,) int or (n, c) multi-hot.

  Optional `query_idx`, `database_idx`, `train_idx` (int index arrays into the n rows) are kept in
  `given_splits` and used by `make_splits` instead of drawing those sets.
  `source[i]` is {"features": float32 (d,), "label": int32 () or (c,)}.
  """

  kind = "features"

  def __init__(self, path: str):
    if not path:
      raise errors.UserError("no feature file given: set --config.data.path=FILE.npz")
    try:
      with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
      raise errors.UserError(f"cannot read feature file {path}: {e}") from e
    for key in ("features", "labels"):
      if key not in arrays:
        raise errors.UserError(
            f"feature file {path} has no {key!r} array (it has {sorted(arrays)})")
    features, labels = arrays["features"], arrays["labels"]
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
      raise errors.UserError(
          f"{path}: 'features' must be a numeric (n, d) array, got {features.dtype} "
          f"{features.shape}")
    if labels.ndim not in (1, 2) or labels.dtype.kind not in "iub":
      raise errors.UserError(
          f"{path}: 'labels' must be int (n,) or multi-hot (n, c), got {labels.dtype} "
          f"{labels.shape}")
    if len(labels) != len(features):
      raise errors.UserError(
          f"{path}: 'features' {features.shape} and 'labels' {labels.shape} have "
          "different lengths")
    if labels.ndim == 2 and not np.isin(labels, (0, 1)).all():
      row = int(np.flatnonzero(~np.isin(labels, (0, 1)).all(axis=1))[0])
      raise errors.UserError(
          f"{path}: multi-hot 'labels' must hold only 0 and 1; row {row} is {labels[row]}")
    self.features = features.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(self.features).all(axis=1))
    if len(bad_rows):
      raise errors.UserError(
          f"{path}: 'features' row {bad_rows[0]} holds NaN or inf (or a value too large for "
          f"float32); {len(bad_rows)} row(s) in all")
    self.labels = labels.astype(np.int32)
    self.given_splits: Dict[str, np.ndarray] = {
        key: np.asarray(arrays[key]) for key in SPLIT_KEYS if key in arrays}
    self.path = path

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> dict:
    return {"features": self.features[i], "label": self.labels[i]}
