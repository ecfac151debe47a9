"""Tests of ops.kmeans: objective vs a NumPy Lloyd run and scikit-learn, restarts, spherical
k-means, re-seeding, 8 devices vs 1."""

import itertools

import jax
import numpy as np
import pytest
from sklearn.cluster import KMeans

import kmeans_reference
from ucsh_jax import ops

N_ROWS, DIM, CLUSTERS = 240, 12, 5


def _blobs(seed=0):
  rng = np.random.default_rng(seed)
  means = 3.0 * rng.normal(size=(CLUSTERS, DIM))
  x = means[rng.integers(0, CLUSTERS, N_ROWS)] + rng.normal(size=(N_ROWS, DIM))
  return x.astype(np.float32)


def test_objective_no_worse_than_numpy_lloyd_and_self_consistent():
  x = _blobs()
  init = x[[0, 1, 2, 3, 4]]
  result = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=20, init_centroids=init)
  _, np_inertia = kmeans_reference.lloyd(x, init, 20)
  assert float(result.inertia) <= np_inertia * (1 + 1e-5)
  dist = kmeans_reference.sq_dist(x, result.centroids)
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


def _seeding_probabilities(x, chosen, num_candidates):
  """P(row r is the next greedy k-means++ seed | the seeds `chosen`), exactly.

  The L = num_candidates candidates are i.i.d. draws with probability p ~ D^2 (squared distance
  to the nearest seed so far); the one leaving the lowest potential phi wins. So r wins iff no
  candidate leaves less than phi(r) and some candidate is r: P_>=(r)^L - P_>(r)^L, with P_>=(r)
  the D^2-mass of the rows whose phi is >= phi(r) (P_> likewise), when the phi are distinct.
  """
  d2 = kmeans_reference.sq_dist(x, x)
  pot = d2[:, list(chosen)].min(1)
  p = pot / pot.sum()
  phi = np.minimum(pot[:, None], d2).sum(0)
  # Distinct potentials (well apart at float32 precision): no ties between candidates.
  assert np.diff(np.sort(phi[pot > 0])).min() > 1e-3 * pot.sum(), chosen
  at_least = np.array([p[phi >= phi[r]].sum() for r in range(len(x))])
  above = np.array([p[phi > phi[r]].sum() for r in range(len(x))])
  return at_least**num_candidates - above**num_candidates


def _deviation(counts, probs, num):
  """Largest (|count - num p| - 1) / sigma over the possible cells (sigma: the binomial one;
  the 1 lets a rare cell be hit once), or inf if an impossible cell (p = 0) was hit."""
  if np.any(counts[probs == 0]):
    return np.inf
  possible = probs > 0
  expected = num * probs[possible]
  sigma = np.sqrt(expected * (1.0 - probs[possible]))
  return float(np.max((np.abs(counts[possible] - expected) - 1.0) / sigma))


@pytest.mark.parametrize("num_clusters", [2, 3])
def test_kmeans_plus_plus_draws_are_d2_weighted_and_greedy(num_clusters):
  """The seeding's distribution over 8,192 keys vs the exact one of greedy k-means++."""
  # Six generic points (chosen so that no two candidates leave the same potential).
  x = (np.random.default_rng(33).normal(size=(6, 3)) * np.array([3.0, 2.0, 1.0])).astype(
      np.float32)
  num_keys, num_rows = 8192, len(x)
  keys = jax.random.split(jax.random.key(123), num_keys)
  # num_iters=0: no Lloyd update, the centroids are the seeds themselves (rows of x).
  seeds = np.asarray(jax.jit(jax.vmap(
      lambda k: ops.kmeans(x, num_clusters, key=k, num_iters=0).centroids))(keys))
  match = np.all(seeds[:, :, None, :] == x[None, None, :, :], axis=-1)
  assert np.all(match.sum(-1) == 1), "a seed is not a row of x"
  rows = match.argmax(-1)  # (num_keys, num_clusters) row index of each seed.

  # The first seed is uniform over the rows.
  first = _deviation(np.bincount(rows[:, 0], minlength=num_rows),
                     np.full(num_rows, 1.0 / num_rows), num_keys)
  assert first <= 5.0, f"first seed not uniform: off by {first:.1f} sigma"

  # The joint distribution of the whole seeding, cell by cell.
  num_candidates = ops.num_seeding_candidates(num_clusters)
  probs = np.zeros((num_rows,) * num_clusters)
  for seq in itertools.permutations(range(num_rows), num_clusters):
    prob = 1.0 / num_rows
    for i in range(1, num_clusters):
      prob *= _seeding_probabilities(x, seq[:i], num_candidates)[seq[i]]
    probs[seq] = prob
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-9)
  counts = np.zeros_like(probs)
  np.add.at(counts, tuple(rows.T), 1)
  deviation = _deviation(counts, probs, num_keys)
  assert deviation <= 5.0, f"seeding distribution off by {deviation:.1f} sigma"


@pytest.mark.parametrize("x, init, centroids, assignments", [
    # The last update moves one row only: Lloyd goes on until nothing changes.
    ([1, 2, 4, 5, 12], [1, 2], [3, 12], [0, 0, 0, 0, 1]),
    # The first update already counts as a change (cluster 0 starts with no rows).
    ([0, 1, 10, 11], [100, 5], [10.5, 0.5], [1, 1, 0, 0]),
    # As many rows as clusters.
    ([3, 1, 2, 7], [0, 1, 2, 3], None, None),
])
def test_lloyd_runs_to_a_fixed_point_on_tiny_inputs(x, init, centroids, assignments):
  x = np.asarray(x, np.float32)[:, None]
  result = ops.kmeans(x, len(init), key=jax.random.key(0), num_iters=20,
                      init_centroids=np.asarray(init, np.float32)[:, None])
  if centroids is None:  # Every row its own cluster: inertia 0.
    assert float(result.inertia) == 0.0
    assert sorted(np.asarray(result.assignments).tolist()) == [0, 1, 2, 3]
  else:
    np.testing.assert_allclose(np.asarray(result.centroids)[:, 0], centroids)
    np.testing.assert_array_equal(np.asarray(result.assignments), assignments)


def test_empty_clusters_are_reseeded_at_the_farthest_rows():
  x = _blobs(2)
  far = np.full((2, DIM), 1e3, np.float32)
  init = np.concatenate([x[:3], far])
  result = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=1, init_centroids=init)
  centroids = np.asarray(result.centroids)
  assert np.all(np.isfinite(centroids))
  dist = kmeans_reference.sq_dist(x, init[:3])
  assign, farthest = dist.argmin(1), np.argsort(-dist.min(1), kind="stable")[:2]
  np.testing.assert_allclose(centroids[3:], x[farthest], rtol=1e-6)
  means = np.stack([x[assign == j].mean(0) for j in range(3)])
  np.testing.assert_allclose(centroids[:3], means, rtol=1e-4, atol=1e-4)
  more = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=10, init_centroids=init)
  assert np.all(np.isfinite(np.asarray(more.centroids)))
  assert len(np.unique(np.asarray(more.assignments))) == CLUSTERS


def test_inertia_within_one_percent_of_sklearn_on_separated_blobs():
  """3,000 points of 10 Gaussian blobs in 64-d (centers of scale 3), 10 seeds."""
  ratios = []
  for seed in range(10):
    rng = np.random.default_rng(seed)
    means = 3.0 * rng.normal(size=(10, 64))
    x = (means[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 64))).astype(np.float32)
    reference = KMeans(10, n_init=10, random_state=seed).fit(x).inertia_
    ours = ops.kmeans(x, 10, key=jax.random.key(seed), num_iters=30, num_inits=10)
    ratios.append(float(ours.inertia) / reference)
  assert max(ratios) <= 1.01, ratios


def test_seeding_is_greedy_with_two_plus_log_n_candidates():
  assert [ops.num_seeding_candidates(n) for n in (1, 2, 3, 10, 30)] == [2, 2, 3, 4, 5]


def test_restarts_keep_the_best_of_the_separate_runs():
  x = np.random.default_rng(5).uniform(size=(N_ROWS, DIM)).astype(np.float32)  # No clusters.
  key = jax.random.key(10)  # Its best restart is the second: neither the first nor the last.
  best = ops.kmeans(x, CLUSTERS, key=key, num_iters=2, num_inits=4)
  # Run i starts from the seeds of split(key, 4)[i] (num_iters=0: the seeds themselves); the
  # NumPy reference runs Lloyd from each and keeps the lowest inertia.
  seeds = [ops.kmeans(x, CLUSTERS, key=k, num_iters=0).centroids
           for k in jax.random.split(key, 4)]
  runs = [kmeans_reference.lloyd(x, s, 2, allow_empty=False) for s in seeds]
  inertias = [inertia for _, inertia in runs]
  assert len(set(np.round(inertias, 3))) > 1  # The restarts really differ.
  assert 0 < np.argmin(inertias) < 3
  centroids = runs[int(np.argmin(inertias))][0]
  np.testing.assert_allclose(float(best.inertia), min(inertias), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(best.centroids), centroids, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(best.assignments),
                                kmeans_reference.sq_dist(x, centroids).argmin(1))


def test_result_is_that_of_the_returned_centroids_when_lloyd_stops_at_num_iters():
  x = _blobs(3)
  init = x[:CLUSTERS]  # Rows of the same blobs, far from a fixed point.
  for num_iters in (1, 2, 3):
    result = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=num_iters,
                        init_centroids=init)
    centroids, inertia = kmeans_reference.lloyd(x, init, num_iters, allow_empty=False)
    previous, _ = kmeans_reference.lloyd(x, init, num_iters - 1, allow_empty=False)
    nearest = kmeans_reference.sq_dist(x, centroids).argmin(1)
    # Lloyd stopped while the assignments still change.
    assert (nearest != kmeans_reference.sq_dist(x, previous).argmin(1)).any()
    np.testing.assert_allclose(np.asarray(result.centroids), centroids, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(result.assignments), nearest)
    np.testing.assert_allclose(float(result.inertia), inertia, rtol=1e-5)


def _np_spherical_lloyd(x, init, num_iters):
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  x, c = unit(np.asarray(x, np.float64)), unit(np.asarray(init, np.float64))
  for _ in range(num_iters):
    assign = (x @ c.T).argmax(1)
    c = unit(np.stack([x[assign == j].mean(0) for j in range(len(c))]))
  assign = (x @ c.T).argmax(1)
  return c, assign, np.sum(2.0 - 2.0 * (x @ c.T).max(1))


def test_spherical_kmeans_matches_numpy():
  x = np.abs(_blobs(6)) * np.random.default_rng(6).uniform(0.5, 5.0, size=(N_ROWS, 1))
  x = x.astype(np.float32)  # Rows of very different norms: only their directions count.
  init = x[[0, 1, 2, 3, 4]]
  result = ops.kmeans(x, CLUSTERS, key=jax.random.key(0), num_iters=10, init_centroids=init,
                      metric="cosine")
  centroids, assign, inertia = _np_spherical_lloyd(x, init, 10)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(result.centroids), axis=1), 1.0,
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(result.assignments), assign)
  np.testing.assert_allclose(np.asarray(result.centroids), centroids, atol=1e-5)
  np.testing.assert_allclose(float(result.inertia), inertia, rtol=1e-4)


@pytest.mark.parametrize("warm", [False, True])
def test_eight_devices_equal_one(warm):
  assert len(jax.devices()) == 8
  x = _blobs(3)
  key = jax.random.key(4)
  # Warm start with an unreachable centroid, so re-seeding runs across shards too.
  init = np.concatenate([x[:4], np.full((1, DIM), 1e3, np.float32)]) if warm else None
  one = ops.kmeans(x, CLUSTERS, key=key, num_iters=8, num_inits=3, init_centroids=init)
  mesh = jax.make_mesh((8,), ("data",))
  eight = ops.kmeans_sharded(x, CLUSTERS, key=key, mesh=mesh, num_iters=8, num_inits=3,
                             init_centroids=init)
  assert eight.assignments.sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(np.asarray(eight.assignments), np.asarray(one.assignments))
  np.testing.assert_allclose(np.asarray(eight.centroids), np.asarray(one.centroids),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(eight.inertia), float(one.inertia), rtol=1e-5)


def test_sharded_seeds_are_rows_of_x_at_every_shard_boundary():
  """Seeds drawn on 8 devices (2 rows each) are rows of x, the first row of each shard too."""
  x = np.random.default_rng(5).normal(size=(16, 3)).astype(np.float32)
  mesh = jax.make_mesh((8,), ("data",))
  picked = set()
  for i in range(48):
    seeds = np.asarray(ops.kmeans_sharded(x, 4, key=jax.random.key(i), mesh=mesh,
                                          num_iters=0).centroids)
    match = np.all(seeds[:, None, :] == x[None, :, :], axis=-1)
    assert np.all(match.sum(-1) == 1), f"key {i}: a seed is not a row of x"
    picked.update(match.argmax(-1).tolist())
  assert set(range(2, 16, 2)) <= picked  # The shards' first rows were drawn.


@pytest.mark.parametrize("call, name", [
    (lambda x: ops.kmeans(x[0], 3, key=jax.random.key(0)), "x must be 2-D"),
    (lambda x: ops.kmeans(x[:2], 3, key=jax.random.key(0)), "fewer than num_clusters"),
    (lambda x: ops.kmeans(x, 3, key=jax.random.key(0), init_centroids=x[:2]),
     "init_centroids"),
    (lambda x: ops.kmeans(x, 3, key=jax.random.key(0), num_inits=0), "num_inits"),
    (lambda x: ops.kmeans(x, 3, key=jax.random.key(0), metric="l1"), "metric"),
    (lambda x: ops.kmeans_sharded(x[:10], 3, key=jax.random.key(0),
                                  mesh=jax.make_mesh((8,), ("data",))), "divisible"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call(_blobs())
