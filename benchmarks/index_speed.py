"""Speed and memory of ucsh_jax.index.HammingIndex against faiss's binary indexes.

1. Exact top-100 of 1,000 queries in 1,000,000 codes of 64 bits: HammingIndex.search,
   metrics.hamming_top_k and faiss IndexBinaryFlat (the reference, default threads and one
   thread), timed back to back `--repeats` times; the ratios are per repeat, against the faiss
   run just before. Uniform random codes and class-clustered codes (eval_speed's data).
2. Peak resident memory of one such search, each method in a fresh process.
3. Search by one code at a time (the command line's and the web page's case): queries/s.
4. faiss IndexBinaryHash and IndexBinaryIVF exports against the exact search, by collection
   size: build and search time, recall@100 (the fraction of ranks whose distance is the exact
   one, so that ties do not count as misses), on codes with near neighbours (clusters of about
   100 codes, 5% of the bits flipped).

  python -m benchmarks.index_speed [--repeats 3] [--sizes 10000,100000,1000000]
      [--faiss_threads 0]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import faiss
import numpy as np

from ucsh_jax import index as index_lib
from ucsh_jax import metrics

NUM_QUERIES, NUM_DB, NUM_BITS, TOP_K = 1_000, 1_000_000, 64, 100


def uniform_codes(n, rng):
  return (rng.integers(0, 2, (n, NUM_BITS), dtype=np.int8) * 2 - 1).astype(np.int8)


def clustered_codes(n, rng, centers, flip):
  """+-1 codes around `centers` with each bit flipped with probability `flip`."""
  flips = np.where(rng.random((n, NUM_BITS), dtype=np.float32) < flip, -1, 1).astype(np.int8)
  return (centers[rng.integers(0, len(centers), n)] * flips).astype(np.int8)


def make_data(kind, num_db, seed=0):
  """(queries, database) +-1 int8 codes: 'uniform', 'classes' (10 centers, 35% flips, like
  eval_speed) or 'near' (num_db / 100 centers, 5% flips)."""
  rng = np.random.default_rng(seed)
  if kind == "uniform":
    return uniform_codes(NUM_QUERIES, rng), uniform_codes(num_db, rng)
  num_centers, flip = (10, 0.35) if kind == "classes" else (max(1, num_db // 100), 0.05)
  centers = uniform_codes(num_centers, rng)
  return (clustered_codes(NUM_QUERIES, rng, centers, flip),
          clustered_codes(num_db, rng, centers, flip))


def timed(fn):
  start = time.perf_counter()
  result = fn()
  return time.perf_counter() - start, result


def faiss_flat(db_codes, threads=None):
  """IndexBinaryFlat of the codes and a search function over +-1 queries."""
  flat = faiss.IndexBinaryFlat(NUM_BITS)
  flat.add(np.packbits(db_codes > 0, axis=1))

  def search(query_codes, k):
    default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads or default)
    try:
      return flat.search(np.packbits(query_codes > 0, axis=1), k)
    finally:
      faiss.omp_set_num_threads(default)
  return search


def methods(db_codes):
  """name -> search(query_codes, k) -> (distances, ids), the reference first."""
  index = index_lib.HammingIndex.from_codes(db_codes)
  return {
      "faiss IndexBinaryFlat": faiss_flat(db_codes),
      "faiss IndexBinaryFlat, 1 thread": faiss_flat(db_codes, threads=1),
      "ucsh_jax.index.HammingIndex": index.search,
      "ucsh_jax.metrics.hamming_top_k":
          lambda q, k: metrics.hamming_top_k(q, db_codes, k)[::-1],
  }


def exact_table(kind, repeats):
  query_codes, db_codes = make_data(kind, NUM_DB)
  searches = methods(db_codes)
  index_lib.HammingIndex.from_codes(db_codes[:5000]).search(query_codes, TOP_K)  # Compiles.
  times = {name: [] for name in searches}
  results = {}
  for _ in range(repeats):
    for name, search in searches.items():
      seconds, results[name] = timed(lambda: search(query_codes, TOP_K))
      times[name].append(seconds)
  ref_name = next(iter(searches))
  ref = np.array(times[ref_name])
  print(f"\nExact top-{TOP_K}: {NUM_QUERIES:,} queries x {NUM_DB:,} codes x {NUM_BITS} bits, "
        f"{kind} codes; best of {repeats}, ratio per repeat against faiss (load average "
        f"{os.getloadavg()[0]:.1f})")
  print(f"{'method':<34}{'best s':>8}{'/ faiss':>9}{'ratios (min-max)':>20}  same as faiss")
  ref_dist, ref_ids = results[ref_name]
  for name in searches:
    ratios = np.array(times[name]) / ref
    dist, ids = results[name]
    same = (f"distances {np.array_equal(dist, ref_dist)}, ids {np.array_equal(ids, ref_ids)}")
    print(f"{name:<34}{min(times[name]):>8.3f}{min(times[name]) / ref.min():>9.2f}"
          f"{f'{ratios.min():.2f}-{ratios.max():.2f}':>20}  {same}")


def _rss_mib(field):
  """VmRSS (now) or VmHWM (peak since the last reset) of this process, MiB."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def memory_child(name, num_db):
  """Runs in a fresh process: prints the RSS before and the peak RSS during one search."""
  query_codes, db_codes = make_data("uniform", num_db)
  search = methods(db_codes)[name]
  if "HammingIndex" in name:  # Compiles and builds the word-major copy first, as timed above.
    search(query_codes[:1], TOP_K)
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets the peak (VmHWM) to the current RSS.
  before = _rss_mib("VmRSS")
  search(query_codes, TOP_K)
  print(json.dumps({"before": before, "growth": _rss_mib("VmHWM") - before}))


def memory_table():
  print("\nPeak resident memory of one search, above the RSS before it (a fresh process "
        "each; Linux VmHWM reset just before the search)")
  print(f"{'method':<34}{'database':>10}{'RSS before MiB':>16}{'peak growth MiB':>17}")
  for name in ("faiss IndexBinaryFlat", "ucsh_jax.index.HammingIndex",
               "ucsh_jax.metrics.hamming_top_k"):
    for num_db in (NUM_DB // 4, NUM_DB):
      out = subprocess.run([sys.executable, "-m", "benchmarks.index_speed", "--memory_child",
                            name, "--memory_db", str(num_db)],
                           capture_output=True, text=True, check=True).stdout
      rss = json.loads(out.strip().splitlines()[-1])
      print(f"{name:<34}{num_db:>10,}{rss['before']:>16.0f}{rss['growth']:>17.1f}")


def single_query_table(num_queries=200):
  query_codes, db_codes = make_data("uniform", NUM_DB)
  query_codes = query_codes[:num_queries]
  searches = methods(db_codes)
  del searches["ucsh_jax.metrics.hamming_top_k"]
  searches["ucsh_jax.index.HammingIndex"](query_codes[:1], 10)  # Compiles the 1-row shape.
  print(f"\nSearch by one code at a time: top-10 in {NUM_DB:,} codes, {num_queries} queries")
  print(f"{'method':<34}{'queries/s':>10}{'/ faiss':>9}")
  ref = None
  for name, search in searches.items():
    seconds, _ = timed(lambda: [search(q[None], 10) for q in query_codes])
    ref = ref or seconds
    print(f"{name:<34}{num_queries / seconds:>10.0f}{ref / seconds:>9.2f}")


def recall(exact_dist, approx_dist):
  """Fraction of ranks whose approximate distance is the exact one (-1: not found)."""
  approx = np.where(approx_dist < 0, np.iinfo(np.int32).max, approx_dist)
  return float(np.mean(approx <= exact_dist))


def approximate_table(sizes, faiss_threads):
  if faiss_threads:
    faiss.omp_set_num_threads(faiss_threads)
  print(f"\nApproximate faiss exports vs exact HammingIndex.search: top-{TOP_K} of "
        f"{NUM_QUERIES:,} queries, codes with near neighbours (clusters of ~100, 5% flips); "
        f"faiss on {faiss.omp_get_max_threads()} threads")
  print(f"{'database':>10}  {'method':<32}{'build s':>8}{'search s':>9}{'/ exact':>8}"
        f"{'recall':>8}")
  for num_db in sizes:
    query_codes, db_codes = make_data("near", num_db, seed=1)
    packed_queries = np.packbits(query_codes > 0, axis=1)
    index = index_lib.HammingIndex.from_codes(db_codes)
    index.search(query_codes[:5], TOP_K)
    exact_s, (exact_dist, _) = timed(lambda: index.search(query_codes, TOP_K))
    print(f"{num_db:>10,}  {'HammingIndex (exact)':<32}{'':>8}{exact_s:>9.3f}{1.0:>8.2f}"
          f"{1.0:>8.3f}")
    for kind, params in (("hash", {}), ("hash", {"nflip": 4}), ("ivf", {}),
                         ("ivf", {"nprobe": 64})):
      build_s, approx = timed(lambda: index.to_faiss(kind, **params))
      search_s, (approx_dist, _) = timed(lambda: approx.search(packed_queries, TOP_K))
      label = f"{kind} {params}" if params else f"{kind} (defaults)"
      print(f"{'':>10}  {label:<32}{build_s:>8.2f}{search_s:>9.3f}{search_s / exact_s:>8.2f}"
            f"{recall(exact_dist, approx_dist):>8.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--sizes", default="10000,100000,1000000")
  parser.add_argument("--faiss_threads", type=int, default=0,
                      help="OpenMP threads of faiss in the approximate part (0: its default)")
  parser.add_argument("--memory_child", help=argparse.SUPPRESS)
  parser.add_argument("--memory_db", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_child:
    memory_child(args.memory_child, args.memory_db)
    return
  print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads; "
        f"HammingIndex on {index_lib._THREADS} threads")  # pylint: disable=protected-access
  for kind in ("uniform", "classes"):
    exact_table(kind, args.repeats)
  memory_table()
  single_query_table()
  approximate_table([int(size) for size in args.sizes.split(",")], args.faiss_threads)


if __name__ == "__main__":
  main()
