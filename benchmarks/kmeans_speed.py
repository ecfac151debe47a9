"""Speed of ops.kmeans against scikit-learn (and faiss when installed).

5,000 x 4,096 float32 features (ReLU of weakly clustered Gaussians, so Lloyd needs all
iterations), N = 10 clusters, 20 Lloyd iterations, every method started from the same
centroids. Prints the best of a few runs, the ratio to the fastest and the relative
inertia difference to scikit-learn.

  python -m benchmarks.kmeans_speed [--repeats 3]    (from the repository root)
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans

from ucsh_jax import ops

NUM_ROWS, DIM, NUM_CLUSTERS, NUM_ITERS = 5_000, 4_096, 10, 20


def make_data(seed=0):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(NUM_CLUSTERS, DIM))
  x = 0.1 * means[rng.integers(0, NUM_CLUSTERS, NUM_ROWS)] + rng.normal(size=(NUM_ROWS, DIM))
  x = np.maximum(x, 0.0).astype(np.float32)
  init = x[rng.choice(NUM_ROWS, NUM_CLUSTERS, replace=False)]
  return x, init


def best_time(fn, repeats):
  result, times = None, []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - start)
  return min(times), result


def run_ops(x, init):
  x_dev, init_dev, key = jnp.asarray(x), jnp.asarray(init), jax.random.key(0)

  def fn():
    result = ops.kmeans(x_dev, NUM_CLUSTERS, key=key, num_iters=NUM_ITERS,
                        init_centroids=init_dev)
    return float(result.inertia), NUM_ITERS

  fn()  # Compile.
  return fn


def run_sklearn(x, init):
  def fn():
    km = KMeans(NUM_CLUSTERS, init=init, n_init=1, max_iter=NUM_ITERS, tol=0.0,
                algorithm="lloyd").fit(x)
    return float(km.inertia_), km.n_iter_
  return fn


def run_faiss(x, init):
  import faiss  # pylint: disable=g-import-not-at-top

  def fn():
    km = faiss.Kmeans(DIM, NUM_CLUSTERS, niter=NUM_ITERS, max_points_per_centroid=NUM_ROWS)
    km.train(x, init_centroids=init)
    index = faiss.IndexFlatL2(DIM)
    index.add(km.centroids)
    dist, _ = index.search(x, 1)
    return float(dist.sum()), NUM_ITERS
  return fn


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  x, init = make_data()
  methods = {"ucsh_jax.ops.kmeans": run_ops, "sklearn KMeans (lloyd)": run_sklearn}
  try:
    import faiss  # pylint: disable=g-import-not-at-top,unused-import
    methods["faiss Kmeans"] = run_faiss
  except ImportError:
    print("faiss is not installed: skipping it (pip install faiss-cpu to compare)")
  rows = {name: best_time(make(x, init), args.repeats) for name, make in methods.items()}
  fastest = min(t for t, _ in rows.values())
  ref_inertia = rows["sklearn KMeans (lloyd)"][1][0]
  print(f"k-means: {NUM_ROWS} x {DIM}, N = {NUM_CLUSTERS}, {NUM_ITERS} iterations, "
        f"same initial centroids; best of {args.repeats}")
  print(f"{'method':<26}{'time (s)':>10}{'/ fastest':>11}{'iters':>7}{'inertia':>16}"
        f"{'rel. diff':>11}")
  for name, (seconds, (inertia, iters)) in rows.items():
    rel = abs(inertia - ref_inertia) / ref_inertia
    print(f"{name:<26}{seconds:>10.3f}{seconds / fastest:>11.2f}{iters:>7}{inertia:>16.1f}"
          f"{rel:>11.1e}")


if __name__ == "__main__":
  main()
