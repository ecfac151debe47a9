"""The per-epoch state: clusters, both SSDH thresholds, neighbour lists, and its scalars."""

import jax
import numpy as np

from ucsh_jax import epoch_state as epoch_state_lib
from ucsh_jax import ops


def _features(seed=0):
  rng = np.random.default_rng(seed)
  means = np.abs(rng.normal(size=(4, 16)))
  return np.abs(means[rng.integers(0, 4, 120)] + 0.3 * rng.normal(size=(120, 16))).astype(
      np.float32)


def test_refresh_finds_clusters_thresholds_and_neighbours():
  x = _features()
  state = epoch_state_lib.refresh_epoch_state(
      x, None, epoch=0, num_clusters=4, kmeans_iters=10, kmeans_inits=3,
      kmeans_metric="cosine", threshold_samples=50, num_neighbours=7, key=jax.random.key(0))
  assert state.neighbours.shape == (120, 7) and state.neighbours.dtype == np.int32
  np.testing.assert_array_equal(state.neighbours, np.asarray(ops.cosine_neighbours(x, 7)))
  assert float(state.threshold) > float(state.threshold_right)
  best = ops.kmeans(x, 4, key=jax.random.split(jax.random.key(0))[0], num_iters=10,
                    num_inits=3, metric="cosine")
  np.testing.assert_array_equal(state.assignments, np.asarray(best.assignments))
  # Later epochs start from the previous centroids: cluster j keeps its identity.
  later = epoch_state_lib.refresh_epoch_state(
      x, state, epoch=1, num_clusters=4, kmeans_iters=10, kmeans_inits=3,
      kmeans_metric="cosine", threshold_samples=50, num_neighbours=0, key=jax.random.key(1))
  np.testing.assert_array_equal(later.assignments, state.assignments)
  assert later.neighbours.shape == (120, 0)
  empty = epoch_state_lib.empty_epoch_state(4, 16, 120, 7)
  assert jax.tree.map(np.shape, tuple(empty)) == jax.tree.map(np.shape, tuple(state))
  # The placeholder (epoch -1, zero centroids) that train.py passes first is no warm start.
  from_placeholder = epoch_state_lib.refresh_epoch_state(
      x, empty, epoch=0, num_clusters=4, kmeans_iters=10, kmeans_inits=3,
      kmeans_metric="cosine", threshold_samples=50, num_neighbours=7, key=jax.random.key(0))
  for name in ("centroids", "assignments", "threshold", "neighbours"):
    np.testing.assert_array_equal(getattr(from_placeholder, name), getattr(state, name))
  assert epoch_state_lib.empty_epoch_state(4, 16, 120).neighbours.shape == (120, 0)


def test_epoch_scalars_name_every_cluster_size():
  state = epoch_state_lib.empty_epoch_state(3, 2, 6)._replace(
      assignments=np.array([0, 2, 2, 0, 2, 2], np.int32), threshold=np.float32(0.25))
  assert epoch_state_lib.cluster_scalars(state, 3) == {
      "threshold": 0.25, "cluster_sizes_min": 0.0, "cluster_size/0": 2.0,
      "cluster_size/1": 0.0, "cluster_size/2": 4.0}
