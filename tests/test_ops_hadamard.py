"""Tests of ops.hadamard and ops.hash_centers (DESIGN.md section 3)."""

import jax
import numpy as np
import pytest
import scipy.linalg

from ucsh_jax import ops


@pytest.mark.parametrize("n", [1, 2, 16, 64])
def test_hadamard_matches_scipy_and_is_orthogonal(n):
  h = np.asarray(ops.hadamard(n))
  assert h.dtype == np.float32 and h.shape == (n, n)
  np.testing.assert_array_equal(h, scipy.linalg.hadamard(n))
  np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


@pytest.mark.parametrize("n", [0, 3, 12, -4])
def test_hadamard_rejects_non_powers_of_two(n):
  with pytest.raises(ValueError, match="power of two"):
    ops.hadamard(n)


def _pairwise_hamming(codes):
  k = codes.shape[1]
  dist = (k - codes @ codes.T) / 2
  return dist[~np.eye(len(codes), dtype=bool)]


@pytest.mark.parametrize("num_centers", [10, 30, 40])
def test_centers_at_16_bits(num_centers):
  k = 16
  centers = np.asarray(ops.hash_centers(num_centers, k, key=jax.random.key(3)))
  assert centers.shape == (num_centers, k)
  assert set(np.unique(centers)) == {-1.0, 1.0}
  assert len(np.unique(centers, axis=0)) == num_centers
  assert _pairwise_hamming(centers).min() >= k / 4
  h = scipy.linalg.hadamard(k)
  if num_centers <= k:
    np.testing.assert_array_equal(centers, h[:num_centers])
  elif num_centers <= 2 * k:
    np.testing.assert_array_equal(centers, np.concatenate([h, -h])[:num_centers])
  else:
    np.testing.assert_array_equal(centers.sum(axis=1), np.zeros(num_centers))


def test_random_rule_for_bits_not_a_power_of_two_is_deterministic_and_jittable():
  key = jax.random.key(5)
  centers = np.asarray(ops.hash_centers(8, 12, key=key))
  assert _pairwise_hamming(centers).min() >= 3
  np.testing.assert_array_equal(centers.sum(axis=1), np.zeros(8))
  jitted = jax.jit(ops.hash_centers, static_argnums=(0, 1))(8, 12, key)
  np.testing.assert_array_equal(np.asarray(jitted), centers)


def test_random_rule_needs_a_key():
  with pytest.raises(ValueError, match="key"):
    ops.hash_centers(40, 16)


def test_impossible_center_set_raises():
  # Balanced 4-bit codes: only 6 exist, so 9 centers cannot be found.
  with pytest.raises(ValueError, match="found only"):
    ops.hash_centers(9, 4, key=jax.random.key(0))
