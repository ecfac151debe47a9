"""Retrieval metrics on +-1 hash codes: Hamming ranking, mAP@K, precision and recall.

The protocol is that of DESIGN.md section 4: the database is ranked by Hamming distance
to each query with ties broken by database index (a stable sort); an item is relevant
when it shares at least one label with the query. Labels are class ids (n,) or multi-hot
(n, c) arrays. Codes are +-1 arrays of any int or float dtype, numpy or jax.

Hamming distances are small integers (0..k), so nothing here runs a general sort over
the database: codes are packed into 64-bit words and compared with XOR + popcount, the
K-th smallest distance of each query is found by a binary search over the distance
values (vectorised counts), and only the items at or below it, usually a little more
than K per query, are ordered with a radix sort on (query, distance), which keeps the
index order within equal distances.
"""

from typing import Iterator, Sequence, Tuple

import numpy as np

# Queries scored together: bounds the (queries, database) work buffers.
_QUERY_CHUNK = 16


def _codes(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"{name} must be non-empty 2-D (n, k) codes, got shape {x.shape}")
  if not np.all((x == 1) | (x == -1)):
    raise ValueError(f"{name} must hold only +1 and -1 entries")
  return x


def _pack(codes: np.ndarray) -> np.ndarray:
  """(n, k) +-1 codes -> (w, n) uint64 words, w = ceil(k / 64), zero padded."""
  bits = np.packbits(codes > 0, axis=1)
  padded = np.zeros((len(codes), -(-bits.shape[1] // 8) * 8), np.uint8)
  padded[:, :bits.shape[1]] = bits
  return np.ascontiguousarray(padded.view(np.uint64).T)


def _labels(x, name: str, num_rows: int) -> np.ndarray:
  """Class ids -> (n,) int64; multi-hot -> (n, w) uint64 bit masks."""
  x = np.asarray(x)
  if x.ndim not in (1, 2) or x.shape[0] != num_rows:
    raise ValueError(
        f"{name} must be class ids ({num_rows},) or multi-hot ({num_rows}, c) to match "
        f"the codes, got shape {x.shape}")
  if x.ndim == 1:
    return x.astype(np.int64)
  return _pack(np.where(x != 0, 1, -1)).T.copy()


class _Retrieval:
  """Validated, packed inputs and the per-query-chunk distance computation."""

  def __init__(self, query_codes, db_codes, query_labels=None, db_labels=None):
    query_codes = _codes(query_codes, "query_codes")
    db_codes = _codes(db_codes, "db_codes")
    if query_codes.shape[1] != db_codes.shape[1]:
      raise ValueError(
          f"query_codes and db_codes need the same number of bits, got shapes "
          f"{query_codes.shape} and {db_codes.shape}")
    self.num_bits = query_codes.shape[1]
    self.num_queries, self.num_db = len(query_codes), len(db_codes)
    self.query_words, self.db_words = _pack(query_codes), _pack(db_codes)
    self.dist_dtype = np.uint8 if self.num_bits < 256 else np.uint16
    if query_labels is not None:
      self.query_labels = _labels(query_labels, "query_labels", self.num_queries)
      self.db_labels = _labels(db_labels, "db_labels", self.num_db)
      if self.query_labels.shape[1:] != self.db_labels.shape[1:]:
        raise ValueError(
            f"query_labels and db_labels must be both class ids or both multi-hot with "
            f"the same classes, got shapes {np.shape(query_labels)} and "
            f"{np.shape(db_labels)}")

  def distance_chunks(self) -> Iterator[Tuple[int, np.ndarray]]:
    """Yields (first query, (b, num_db) distances); the buffer is reused between chunks."""
    xor = np.empty((_QUERY_CHUNK, self.num_db), np.uint64)
    count = np.empty((_QUERY_CHUNK, self.num_db), np.uint8)
    dist = np.empty((_QUERY_CHUNK, self.num_db), self.dist_dtype)
    for start in range(0, self.num_queries, _QUERY_CHUNK):
      b = min(_QUERY_CHUNK, self.num_queries - start)
      for w, (q_words, db_words) in enumerate(zip(self.query_words, self.db_words)):
        np.bitwise_xor(q_words[start:start + b, None], db_words[None, :], out=xor[:b])
        np.bitwise_count(xor[:b], out=count[:b])
        if w == 0:
          dist[:b] = count[:b]
        else:
          dist[:b] += count[:b]
      yield start, dist[:b]

  def relevant(self, query_idx: np.ndarray, db_idx: np.ndarray) -> np.ndarray:
    """Whether the (broadcast) query/database index pairs share a label."""
    q, d = self.query_labels[query_idx], self.db_labels[db_idx]
    if q.ndim == query_idx.ndim:
      return q == d
    return np.any((q & d) != 0, axis=-1)

  def ranked(self, dist_BxM: np.ndarray, depth: int) -> np.ndarray:
    """(b, depth) database indices of the first `depth` ranked items of each query."""
    b, m = dist_BxM.shape
    # Per query, the smallest distance t with #{d <= t} >= depth: a search over t that
    # first tries a guess from a subsample and its neighbour, then bisects.
    sample = np.sort(dist_BxM[:, ::max(1, m // 2048)], axis=1, kind="stable")
    guess = sample[:, min(sample.shape[1] - 1, -(-depth * sample.shape[1] // m) - 1)]
    lo, hi = np.zeros(b, np.int64), np.full(b, self.num_bits, np.int64)
    count = np.full(b, m, np.int64)
    mid, step = guess.astype(np.int64), 0
    while np.any(lo < hi):
      mask_BxM = dist_BxM <= mid[:, None].astype(dist_BxM.dtype)
      below = np.array([np.count_nonzero(row) for row in mask_BxM])  # Faster than axis=1.
      enough = below >= depth
      hi, lo = np.where(enough, mid, hi), np.where(enough, lo, mid + 1)
      count = np.where(enough, below, count)
      step += 1
      mid = np.where(enough, hi - 1, lo) if step == 1 else (lo + hi) // 2
      mid = np.clip(mid, lo, np.maximum(hi - 1, lo))
    flat = np.flatnonzero(dist_BxM <= lo[:, None].astype(dist_BxM.dtype))
    # The candidates are in (query, index) order; a stable radix sort on
    # (query, distance) ranks them and keeps each query's block in place.
    key_dtype = np.uint16 if b * (self.num_bits + 1) < 2**16 else np.uint32
    row_key = (np.arange(b) * (self.num_bits + 1)).astype(key_dtype)
    key = np.repeat(row_key, count) + dist_BxM.ravel()[flat]
    flat = flat[np.argsort(key, kind="stable")]
    row_start = np.cumsum(count) - count
    top_BxK = flat[row_start[:, None] + np.arange(depth)]
    return top_BxK - (np.arange(b) * m)[:, None]

  def radius_counts(self) -> Tuple[np.ndarray, np.ndarray]:
    """(num_queries, k + 1) counts of all and of relevant items at each distance."""
    size = self.num_bits + 1
    every = np.empty((self.num_queries, size), np.int64)
    hits = np.empty((self.num_queries, size), np.int64)
    for start, dist_BxM in self.distance_chunks():
      b = len(dist_BxM)
      key_BxM = dist_BxM + (np.arange(b) * size)[:, None]
      rel_BxM = self.relevant(np.arange(start, start + b)[:, None],
                              np.arange(self.num_db)[None, :])
      every[start:start + b] = np.bincount(key_BxM.ravel(), minlength=b * size).reshape(b, size)
      hits[start:start + b] = np.bincount(key_BxM[rel_BxM], minlength=b * size).reshape(b, size)
    return every, hits


def hamming_distance(query_codes, db_codes) -> np.ndarray:
  """Hamming distances (k - b_q . b_d) / 2 between +-1 codes.

  Args:
    query_codes: (q, k) +-1 codes.
    db_codes: (m, k) +-1 codes.

  Returns:
    (q, m) int32 distances in 0..k.
  """
  data = _Retrieval(query_codes, db_codes)
  out = np.empty((data.num_queries, data.num_db), np.int32)
  for start, dist_BxM in data.distance_chunks():
    out[start:start + len(dist_BxM)] = dist_BxM
  return out


def hamming_top_k(query_codes, db_codes, k: int) -> Tuple[np.ndarray, np.ndarray]:
  """The k nearest database codes of each query, ties broken by database index.

  Args:
    query_codes: (q, k_bits) +-1 codes.
    db_codes: (m, k_bits) +-1 codes.
    k: number of neighbours, 1..m.

  Returns:
    (indices, distances): (q, k) int64 database indices in rank order and their (q, k)
    int32 Hamming distances.
  """
  data = _Retrieval(query_codes, db_codes)
  if not 1 <= k <= data.num_db:
    raise ValueError(f"k must be in 1..{data.num_db}, got {k}")
  indices = np.empty((data.num_queries, k), np.int64)
  distances = np.empty((data.num_queries, k), np.int32)
  for start, dist_BxM in data.distance_chunks():
    b = len(dist_BxM)
    indices[start:start + b] = top_BxK = data.ranked(dist_BxM, k)
    distances[start:start + b] = np.take_along_axis(dist_BxM, top_BxK, axis=1)
  return indices, distances


def mean_average_precision(query_codes, db_codes, query_labels, db_labels,
                           topk=None) -> float:
  """mAP@topk of Hamming ranking (DESIGN.md section 4).

  For each query the database is ranked by Hamming distance, ties broken by database
  index; AP = mean of precision@i over the relevant positions i <= topk, and a query with
  no relevant item in its top K scores 0 (and still counts in the mean).

  Args:
    query_codes: (q, k) +-1 codes.
    db_codes: (m, k) +-1 codes.
    query_labels: (q,) class ids or (q, c) multi-hot.
    db_labels: (m,) or (m, c), like query_labels.
    topk: K (e.g. 5000); None or K >= m ranks the whole database.

  Returns:
    mAP as a Python float.
  """
  data = _Retrieval(query_codes, db_codes, query_labels, db_labels)
  if topk is not None and topk < 1:
    raise ValueError(f"topk must be None or >= 1, got {topk}")
  depth = data.num_db if topk is None else min(topk, data.num_db)
  ap = np.empty(data.num_queries)
  for start, dist_BxM in data.distance_chunks():
    b = len(dist_BxM)
    rel_BxK = data.relevant(np.arange(start, start + b)[:, None], data.ranked(dist_BxM, depth))
    hits_BxK = np.cumsum(rel_BxK, axis=1)
    num_rel = hits_BxK[:, -1]
    total = np.sum(np.where(rel_BxK, hits_BxK / np.arange(1, depth + 1), 0.0), axis=1)
    ap[start:start + b] = np.where(num_rel > 0, total / np.maximum(num_rel, 1), 0.0)
  return float(np.mean(ap))


def precision_at_k(query_codes, db_codes, query_labels, db_labels,
                   ks: Sequence[int]) -> np.ndarray:
  """Mean over queries of the fraction of relevant items among the top k (stable ranking).

  Args:
    query_codes, db_codes, query_labels, db_labels: as in `mean_average_precision`.
    ks: cut-offs, each in 1..m.

  Returns:
    (len(ks),) float64 precisions.
  """
  data = _Retrieval(query_codes, db_codes, query_labels, db_labels)
  ks = np.asarray(ks, np.int64).reshape(-1)
  if len(ks) == 0 or ks.min() < 1 or ks.max() > data.num_db:
    raise ValueError(f"ks must be non-empty cut-offs in 1..{data.num_db}, got {ks.tolist()}")
  hits_at = np.empty((data.num_queries, len(ks)))
  for start, dist_BxM in data.distance_chunks():
    b = len(dist_BxM)
    top_BxK = data.ranked(dist_BxM, int(ks.max()))
    rel_BxK = data.relevant(np.arange(start, start + b)[:, None], top_BxK)
    hits_at[start:start + b] = np.cumsum(rel_BxK, axis=1)[:, ks - 1]
  return np.mean(hits_at, axis=0) / ks


def precision_recall_curve(query_codes, db_codes, query_labels,
                           db_labels) -> Tuple[np.ndarray, np.ndarray]:
  """Precision and recall of Hamming-ball retrieval at radii 0..k.

  At radius r a query retrieves the items with distance <= r. Precision is averaged over
  queries with a query that retrieves nothing counting as 0; recall (relevant retrieved /
  relevant in the database) likewise, a query with no relevant item counting as 0.

  Args:
    query_codes, db_codes, query_labels, db_labels: as in `mean_average_precision`.

  Returns:
    (precision, recall), each a (k + 1,) float64 array indexed by the radius.
  """
  every, hits = _Retrieval(query_codes, db_codes, query_labels, db_labels).radius_counts()
  retrieved, found = np.cumsum(every, axis=1), np.cumsum(hits, axis=1)
  precision = np.where(retrieved > 0, found / np.maximum(retrieved, 1), 0.0)
  total = found[:, -1:]
  recall = np.where(total > 0, found / np.maximum(total, 1), 0.0)
  return precision.mean(axis=0), recall.mean(axis=0)


def precision_within_radius(query_codes, db_codes, query_labels, db_labels,
                            radius: int = 2) -> float:
  """Mean precision of the items within Hamming distance `radius` (0 when none).

  Args:
    query_codes, db_codes, query_labels, db_labels: as in `mean_average_precision`.
    radius: Hamming radius >= 0 (2 is the usual "P@H<=2").

  Returns:
    Precision as a Python float.
  """
  if radius < 0:
    raise ValueError(f"radius must be >= 0, got {radius}")
  precision, _ = precision_recall_curve(query_codes, db_codes, query_labels, db_labels)
  return float(precision[min(radius, len(precision) - 1)])
