"""Tests of ops.pairwise_similarity and ops.similarity_threshold against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucsh_jax import ops


def _np_cosine(x):
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=1)
  unit = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
  return unit @ unit.T


def test_pairwise_similarity_matches_numpy_with_zero_row():
  x = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
  x[4] = 0.0
  got = np.asarray(jax.jit(ops.pairwise_similarity)(x))
  want = 1.0 - 2.0 * (1.0 - _np_cosine(x))
  np.testing.assert_allclose(got, want, atol=1e-5)
  grad = jax.grad(lambda v: jnp.sum(ops.pairwise_similarity(v)**2))(jnp.asarray(x))
  assert np.all(np.isfinite(np.asarray(grad)))


def test_pairwise_similarity_rejects_non_matrix():
  with pytest.raises(ValueError, match="x must be 2-D"):
    ops.pairwise_similarity(jnp.ones((2, 3, 4)))


def _np_threshold(x):
  i, j = np.triu_indices(len(x), k=1)
  d = np.clip(1.0 - _np_cosine(x)[i, j], 0.0, 2.0)
  counts, edges = np.histogram(d, bins=100, range=(0.0, 1.0))
  mode = edges[np.argmax(counts)]
  left, right = d[d < mode], d[d > mode]
  sigma_left = np.sqrt(np.mean((mode - left)**2)) if len(left) else 0.0
  sigma_right = np.sqrt(np.mean((right - mode)**2)) if len(right) else 0.0
  return (1.0 - 2.0 * (mode - 2.0 * sigma_left), 1.0 - 2.0 * (mode + 2.0 * sigma_right), mode,
          sigma_left, sigma_right)


@pytest.mark.parametrize("seed", [0, 1])
def test_similarity_threshold_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  # ReLU features around 4 directions: distances spread over [0, 1].
  means = rng.normal(size=(4, 32))
  x = np.maximum(means[rng.integers(0, 4, 300)] + 0.8 * rng.normal(size=(300, 32)), 0.0)
  x = x.astype(np.float32)
  got = jax.jit(ops.similarity_threshold)(x)
  want = _np_threshold(x)
  np.testing.assert_allclose(
      [float(got.threshold), float(got.threshold_right), float(got.mode),
       float(got.sigma_left), float(got.sigma_right)],
      want, atol=1e-4)
  assert 0.0 < float(got.mode) < 1.0


def test_similarity_threshold_needs_two_rows():
  with pytest.raises(ValueError, match="x needs at least 2 rows"):
    ops.similarity_threshold(jnp.ones((1, 4)))


def test_ssdh_similarity_thresholds_both_ways():
  sim = np.random.default_rng(3).uniform(-1, 1, size=(7, 7)).astype(np.float32)
  got = np.asarray(jax.jit(ops.ssdh_similarity)(sim, 0.4, -0.2))
  want = np.where(sim > 0.4, 1.0, np.where(sim < -0.2, -1.0, 0.0))
  np.testing.assert_array_equal(got, want)
  assert {-1.0, 0.0, 1.0} == set(np.unique(got))


def test_cosine_neighbours_match_numpy_ranks():
  x = np.abs(np.random.default_rng(4).normal(size=(30, 6))).astype(np.float32)
  got = np.asarray(ops.cosine_neighbours(x, 5))
  cos = _np_cosine(x)
  np.fill_diagonal(cos, np.inf)
  want = np.argsort(-cos, axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[:, 0], np.arange(30))  # Each row is its own first.
  with pytest.raises(ValueError, match="num_neighbours"):
    ops.cosine_neighbours(x, 31)


def test_neighbour_similarity_is_symmetrised_membership():
  rng = np.random.default_rng(5)
  lists = rng.integers(0, 50, size=(8, 4)).astype(np.int32)
  index = rng.permutation(50)[:8].astype(np.int32)
  lists[2, 1] = index[5]  # 5 is a neighbour of 2, not necessarily the other way round.
  got = np.asarray(jax.jit(ops.neighbour_similarity)(lists, index))
  member = np.array([[index[j] in lists[i] for j in range(8)] for i in range(8)])
  np.testing.assert_array_equal(got, np.where(member | member.T, 1.0, -1.0))
  assert got[2, 5] == got[5, 2] == 1.0
  with pytest.raises(ValueError, match="neighbours must be"):
    ops.neighbour_similarity(lists, index[:3])
