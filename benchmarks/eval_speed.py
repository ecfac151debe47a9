"""Speed of ucsh_jax.metrics mAP@5000 against a plain NumPy per-query implementation.

1,000 queries x 59,000 database codes x 64 bits (the CIFAR-10 protocol's sizes), codes
drawn around 10 class centers with 35% of the bits flipped, one class label each. Also
times Hamming top-k search against faiss IndexBinaryFlat when faiss is installed.

  python -m benchmarks.eval_speed [--repeats 3]    (from the repository root)
"""

import argparse
import time

import numpy as np

from ucsh_jax import metrics

NUM_QUERIES, NUM_DB, NUM_BITS, NUM_CLASSES, TOP_K = 1_000, 59_000, 64, 10, 5_000


def make_data(seed=0):
  rng = np.random.default_rng(seed)
  centers = np.where(rng.normal(size=(NUM_CLASSES, NUM_BITS)) >= 0, 1, -1)

  def draw(n):
    labels = rng.integers(0, NUM_CLASSES, n)
    flips = np.where(rng.uniform(size=(n, NUM_BITS)) < 0.35, -1, 1)
    return (centers[labels] * flips).astype(np.float32), labels

  query_codes, query_labels = draw(NUM_QUERIES)
  db_codes, db_labels = draw(NUM_DB)
  return query_codes, db_codes, query_labels, db_labels


def numpy_map(query_codes, db_codes, query_labels, db_labels, topk):
  """The usual per-query loop: distances from the inner product, stable argsort."""
  aps = np.zeros(len(query_codes))
  for q in range(len(query_codes)):
    dist = 0.5 * (query_codes.shape[1] - db_codes @ query_codes[q])
    order = np.argsort(dist, kind="stable")[:topk]
    rel = (db_labels[order] == query_labels[q]).astype(np.float64)
    hits = np.cumsum(rel)
    if hits[-1] > 0:
      aps[q] = np.sum(rel * hits / np.arange(1, len(rel) + 1)) / hits[-1]
  return float(np.mean(aps))


def best_time(fn, repeats):
  times, result = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return min(times), result


def faiss_top_k(query_codes, db_codes, repeats):
  """Times faiss IndexBinaryFlat top-k search; returns (seconds, distances) or None."""
  try:
    import faiss  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  index = faiss.IndexBinaryFlat(NUM_BITS)
  index.add(np.packbits(db_codes > 0, axis=1))
  packed = np.packbits(query_codes > 0, axis=1)
  seconds, (distances, _) = best_time(lambda: index.search(packed, TOP_K), repeats)
  return seconds, distances


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  data = make_data()
  ours_s, ours_map = best_time(
      lambda: metrics.mean_average_precision(*data, topk=TOP_K), args.repeats)
  ref_s, ref_map = best_time(lambda: numpy_map(*data, TOP_K), 1)
  print(f"mAP@{TOP_K}: {NUM_QUERIES} queries x {NUM_DB} database codes x {NUM_BITS} bits")
  print(f"{'method':<34}{'time (s)':>10}{'speed-up':>10}{'mAP':>22}")
  print(f"{'NumPy per-query stable argsort':<34}{ref_s:>10.3f}{1.0:>10.1f}{ref_map:>22.17f}")
  print(f"{'ucsh_jax.metrics':<34}{ours_s:>10.3f}{ref_s / ours_s:>10.1f}{ours_map:>22.17f}")
  print(f"MAPs identical: {ours_map == ref_map} (difference {abs(ours_map - ref_map):.1e})")

  print(f"\nHamming top-{TOP_K} search")
  top_s, (_, top_dist) = best_time(
      lambda: metrics.hamming_top_k(data[0], data[1], TOP_K), args.repeats)
  faiss_run = faiss_top_k(data[0], data[1], args.repeats)
  print(f"{'method':<34}{'time (s)':>10}{'/ faiss':>10}")
  if faiss_run is None:
    print(f"{'ucsh_jax.metrics.hamming_top_k':<34}{top_s:>10.3f}{'-':>10}")
    print("faiss is not installed (optional: pip install faiss-cpu)")
    return
  faiss_s, faiss_dist = faiss_run
  print(f"{'faiss IndexBinaryFlat':<34}{faiss_s:>10.3f}{1.0:>10.2f}")
  print(f"{'ucsh_jax.metrics.hamming_top_k':<34}{top_s:>10.3f}{top_s / faiss_s:>10.2f}")
  print(f"top-{TOP_K} distances identical: {np.array_equal(top_dist, faiss_dist)}")


if __name__ == "__main__":
  main()
