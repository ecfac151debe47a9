"""Tests of ops.kmeans: objective vs a NumPy Lloyd run, re-seeding, 8 devices vs 1."""

import jax
import numpy as np
import pytest

from ucsh_jax import ops

N_ROWS, DIM, CLUSTERS = 240, 12, 5


def _blobs(seed=0):
  rng = np.random.default_rng(seed)
  means = 3.0 * rng.normal(size=(CLUSTERS, DIM))
  x = means[rng.integers(0, CLUSTERS, N_ROWS)] + rng.normal(size=(N_ROWS, DIM))
  return x.astype(np.float32)


def _sq_dist(x, c):
  x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
  return ((x[:, None, :] - c[None, :, :])**2).sum(-1)


def _np_lloyd(x, init, num_iters):
  c = np.asarray(init, np.float64)
  for _ in range(num_iters):
    assign = _sq_dist(x, c).argmin(1)
    c = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j]
                  for j in range(len(c))])
  return c, _sq_dist(x, c).min(1).sum()


def test_objective_no_worse_than_numpy_lloyd_and_self_consistent():
  x = _blobs()
  init = x[[0, 1, 2, 3, 4]]
  result = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=20, init_centroids=init)
  _, np_inertia = _np_lloyd(x, init, 20)
  assert float(result.inertia) <= np_inertia * (1 + 1e-5)
  dist = _sq_dist(x, result.centroids)
  assign = np.asarray(result.assignments)
  np.testing.assert_allclose(dist[np.arange(N_ROWS), assign], dist.min(1), rtol=1e-5)
  np.testing.assert_allclose(float(result.inertia), dist.min(1).sum(), rtol=1e-5)
  means = np.stack([x[assign == j].mean(0) for j in range(CLUSTERS)])
  np.testing.assert_allclose(np.asarray(result.centroids), means, rtol=1e-4, atol=1e-4)


def test_kmeans_plus_plus_seeding_picks_distinct_rows():
  x = _blobs(1)
  seeds = np.asarray(ops.kmeans(x, CLUSTERS, key=jax.random.key(2), num_iters=0).centroids)
  matches = [np.flatnonzero(np.all(x == s, axis=1)) for s in seeds]
  assert all(len(m) == 1 for m in matches)
  assert len({int(m[0]) for m in matches}) == CLUSTERS


def test_empty_clusters_are_reseeded_at_the_farthest_rows():
  x = _blobs(2)
  far = np.full((2, DIM), 1e3, np.float32)
  init = np.concatenate([x[:3], far])
  result = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=1, init_centroids=init)
  centroids = np.asarray(result.centroids)
  assert np.all(np.isfinite(centroids))
  dist = _sq_dist(x, init[:3])
  assign, farthest = dist.argmin(1), np.argsort(-dist.min(1), kind="stable")[:2]
  np.testing.assert_allclose(centroids[3:], x[farthest], rtol=1e-6)
  means = np.stack([x[assign == j].mean(0) for j in range(3)])
  np.testing.assert_allclose(centroids[:3], means, rtol=1e-4, atol=1e-4)
  more = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=10, init_centroids=init)
  assert np.all(np.isfinite(np.asarray(more.centroids)))
  assert len(np.unique(np.asarray(more.assignments))) == CLUSTERS


@pytest.mark.parametrize("warm", [False, True])
def test_eight_devices_equal_one(warm):
  assert len(jax.devices()) == 8
  x = _blobs(3)
  key = jax.random.key(4)
  # Warm start with an unreachable centroid, so re-seeding runs across shards too.
  init = np.concatenate([x[:4], np.full((1, DIM), 1e3, np.float32)]) if warm else None
  one = ops.kmeans(x, CLUSTERS, key=key, num_iters=8, init_centroids=init)
  mesh = jax.make_mesh((8,), ("data",))
  eight = ops.kmeans_sharded(x, CLUSTERS, key=key, mesh=mesh, num_iters=8,
                             init_centroids=init)
  assert eight.assignments.sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(np.asarray(eight.assignments), np.asarray(one.assignments))
  np.testing.assert_allclose(np.asarray(eight.centroids), np.asarray(one.centroids),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(eight.inertia), float(one.inertia), rtol=1e-5)


@pytest.mark.parametrize("call, name", [
    (lambda x: ops.kmeans(x[0], 3, key=jax.random.key(0)), "x must be 2-D"),
    (lambda x: ops.kmeans(x[:2], 3, key=jax.random.key(0)), "fewer than num_clusters"),
    (lambda x: ops.kmeans(x, 3, key=jax.random.key(0), init_centroids=x[:2]),
     "init_centroids"),
    (lambda x: ops.kmeans_sharded(x[:10], 3, key=jax.random.key(0),
                                  mesh=jax.make_mesh((8,), ("data",))), "divisible"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call(_blobs())
