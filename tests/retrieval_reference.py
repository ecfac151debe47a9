"""Plain NumPy references of the retrieval protocol (DESIGN.md section 4), for the tests.

Written independently of ucsh_jax.metrics: Hamming distance (k - q . d) / 2, a stable argsort
per query (ties broken by database index), relevant = sharing a label, AP@K = the mean of
precision@i over the relevant positions i <= K, 0 for a query with no relevant item in its
top K (such a query still counts in the mean).
"""

import numpy as np


def relevance(query_labels, db_labels):
  """(q, m) bool: query i and database item j share a label (class ids or multi-hot)."""
  query_labels, db_labels = np.asarray(query_labels), np.asarray(db_labels)
  if query_labels.ndim == 1:
    return query_labels[:, None] == db_labels[None, :]
  return (query_labels.astype(np.int64) @ db_labels.astype(np.int64).T) > 0


def hamming(query_codes, db_codes):
  """(q, m) Hamming distances (k - q . d) / 2 of +-1 codes."""
  query_codes = np.asarray(query_codes, np.float64)
  return 0.5 * (query_codes.shape[1] - query_codes @ np.asarray(db_codes, np.float64).T)


def mean_average_precision(query_codes, db_codes, query_labels, db_labels, topk=None):
  """mAP@topk of the Hamming ranking; topk None ranks the whole database."""
  dist, rel = hamming(query_codes, db_codes), relevance(query_labels, db_labels)
  aps = []
  for q in range(len(dist)):
    ranked_rel = rel[q, np.argsort(dist[q], kind="stable")[:topk]]
    positions = np.flatnonzero(ranked_rel) + 1
    hits = np.arange(1, len(positions) + 1)
    aps.append(np.mean(hits / positions) if len(positions) else 0.0)
  return float(np.mean(aps))


def chance_map(query_labels, db_labels, num_bits, topk=None, seeds=range(5)):
  """The mean mAP of the same evaluation with uniformly random +-1 codes, over `seeds`."""
  maps = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    codes = [rng.choice([-1, 1], size=(len(labels), num_bits))
             for labels in (query_labels, db_labels)]
    maps.append(mean_average_precision(*codes, query_labels, db_labels, topk))
  return float(np.mean(maps))
