"""Retrieval evaluation: encode the query and database sets, score them, write the results."""

import json
import os
from typing import Any, Dict

import numpy as np

from ucsh_jax import index
from ucsh_jax import inference
from ucsh_jax import metrics

PRECISION_KS = (100, 500, 1000, 5000)
# The database's HammingIndex, written by `write_codes` next to codes.npz.
INDEX_NAME = "database.index"


def encode_query_and_database(forward, params, source, splits, **kwargs) -> Dict[str, np.ndarray]:
  """The arrays of `codes.npz`: query/database codes (+-1 int8), labels and ids.

  The ids (int64) are the items' positions in the data set, `splits.query` and
  `splits.database`.
  """
  labels = np.asarray(source.labels)
  return {"query_ids": np.asarray(splits.query, np.int64),
          "database_ids": np.asarray(splits.database, np.int64),
          "query_codes": inference.outputs_for(forward, params, source, splits.query, "codes",
                                               description="encoding the queries", **kwargs),
          "database_codes": inference.outputs_for(forward, params, source, splits.database,
                                                  "codes", description="encoding the database",
                                                  **kwargs),
          "query_labels": labels[splits.query],
          "database_labels": labels[splits.database]}


def score(codes: Dict[str, np.ndarray], topk: int) -> Dict[str, Any]:
  """MAP@topk (topk <= 0: the whole database), precision@k (the PRECISION_KS up to the
  database's size: none for a database under 100 items) and precision within radius 2."""
  args = (codes["query_codes"], codes["database_codes"], codes["query_labels"],
          codes["database_labels"])
  num_db = len(codes["database_codes"])
  ks = [k for k in PRECISION_KS if k <= num_db]
  precisions = metrics.precision_at_k(*args, ks=ks) if ks else []  # None under 100 items.
  return {
      "topk": int(topk) if topk > 0 else None,
      "map": float(metrics.mean_average_precision(*args, topk=topk if topk > 0 else None)),
      "precision_at_k": {str(k): float(p) for k, p in zip(ks, precisions)},
      "precision_within_radius_2": float(metrics.precision_within_radius(*args, radius=2)),
  }


def write_json(path: str, payload: Dict[str, Any]) -> None:
  """Writes atomically (temporary file then rename), so a crash never leaves half a file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def write_codes(path: str, codes: Dict[str, np.ndarray]) -> None:
  """Writes `codes` to `path` (.npz) and the database's HammingIndex to INDEX_NAME beside it.

  Both atomically. The index holds `database_codes` with `database_ids`; a code length that is
  not a multiple of 8 is refused (errors.UserError) before anything is written.
  """
  database = index.HammingIndex.from_codes(codes["database_codes"], ids=codes["database_ids"])
  tmp = path + ".tmp.npz"
  np.savez(tmp, **codes)
  os.replace(tmp, path)
  database.save(os.path.join(os.path.dirname(path), INDEX_NAME))
