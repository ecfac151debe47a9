"""The retrieval curves of one set of codes, computed once by `ucsh_jax.metrics`.

Every plotted retrieval number (and the MAP in each legend) comes from one `curves(...)` call;
the report writes the same arrays to `report/data.json`.
"""

import dataclasses
from typing import Any, Dict, Mapping, Optional

import numpy as np

from ucsh_jax import evaluate
from ucsh_jax import metrics

MAX_K = 5000  # Precision@k is drawn for k up to this (or the database size).
_NUM_KS = 50  # Evenly spaced cut-offs, plus evaluate.PRECISION_KS.


@dataclasses.dataclass(frozen=True)
class Curves:
  """Retrieval curves of one method at one code length.

  Attributes:
    label: legend name, e.g. "UCSH" or "ITQ".
    bits: code length k.
    topk: the K of `map` (None: the whole database).
    map: mAP@topk.
    precision_R, recall_R: Hamming-ball precision and recall at radii 0..k (R = k + 1).
    ks_P: precision@k cut-offs, increasing, in 1..min(MAX_K, database size).
    precision_at_k_P: precision at those cut-offs.
  """
  label: str
  bits: int
  topk: Optional[int]
  map: float
  precision_R: np.ndarray
  recall_R: np.ndarray
  ks_P: np.ndarray
  precision_at_k_P: np.ndarray

  def to_json(self) -> Dict[str, Any]:
    return {"label": self.label, "bits": self.bits, "topk": self.topk, "map": self.map,
            "radius": list(range(self.bits + 1)), "precision_within_radius":
            self.precision_R.tolist(), "recall_within_radius": self.recall_R.tolist(),
            "k": self.ks_P.tolist(), "precision_at_k": self.precision_at_k_P.tolist()}


def cutoffs(num_database: int) -> np.ndarray:
  """(P,) int64 cut-offs: evenly spaced over 1..min(MAX_K, m), with evaluate.PRECISION_KS."""
  top = min(MAX_K, num_database)
  even = np.round(np.linspace(1, top, _NUM_KS)).astype(np.int64)
  fixed = np.asarray([k for k in evaluate.PRECISION_KS if k <= top], np.int64)
  return np.unique(np.concatenate([even, fixed]))


def curves(codes: Mapping[str, np.ndarray], *, label: str, topk: Optional[int]) -> Curves:
  """The curves of `codes` (the arrays of codes.npz: query/database codes and labels).

  Args:
    codes: "query_codes" (q, k), "database_codes" (m, k), "query_labels" (q,) or (q, c),
      "database_labels" (m,) or (m, c).
    label: legend name.
    topk: K of the MAP; None (or <= 0) ranks the whole database.
  """
  args = (codes["query_codes"], codes["database_codes"], codes["query_labels"],
          codes["database_labels"])
  topk = topk if topk and topk > 0 else None
  precision_R, recall_R = metrics.precision_recall_curve(*args)
  ks_P = cutoffs(len(codes["database_codes"]))
  return Curves(label=label, bits=int(np.shape(codes["query_codes"])[1]), topk=topk,
                map=float(metrics.mean_average_precision(*args, topk=topk)),
                precision_R=precision_R, recall_R=recall_R, ks_P=ks_P,
                precision_at_k_P=metrics.precision_at_k(*args, ks=ks_P))


def bit_balance(codes_NxK: np.ndarray) -> np.ndarray:
  """(k,) fraction of +1 entries per bit of +-1 codes (N, k)."""
  return np.mean(np.asarray(codes_NxK) > 0, axis=0)
