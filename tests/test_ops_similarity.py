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
  return 1.0 - 2.0 * (mode - 2.0 * sigma_left), mode, sigma_left, sigma_right


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
      [float(got.threshold), float(got.mode), float(got.sigma_left), float(got.sigma_right)],
      want, atol=1e-4)
  assert 0.0 < float(got.mode) < 1.0


def test_similarity_threshold_needs_two_rows():
  with pytest.raises(ValueError, match="x needs at least 2 rows"):
    ops.similarity_threshold(jnp.ones((1, 4)))
