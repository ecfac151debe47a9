"""Tests of DistillHash's ops (neighbour label counts, distillation, pairwise likelihood) against
NumPy loops written from the formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucsh_jax import ops


def _labels_and_neighbours(n=9, k=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.choice([-1, 0, 1], size=(n, n), p=[0.5, 0.2, 0.3]).astype(np.float32)
  labels = np.where(np.triu(np.ones((n, n), bool)), labels, labels.T)  # Symmetric.
  neighbours = np.stack([np.concatenate([[i], rng.choice(np.delete(np.arange(n), i), k - 1,
                                                          replace=False)])
                         for i in range(n)]).astype(np.int32)
  return labels, neighbours


def _np_counts(labels, neighbours):
  n = len(labels)
  counts = np.zeros((2, n, n), np.int64)
  for i in range(n):
    for j in range(n):
      for p in neighbours[i]:
        for q in neighbours[j]:
          counts[0, i, j] += labels[p, q] == 1
          counts[1, i, j] += labels[p, q] == -1
  return counts


def test_neighbour_label_counts_match_loops():
  labels, neighbours = _labels_and_neighbours()
  got = np.asarray(ops.neighbour_label_counts(labels, neighbours))
  np.testing.assert_array_equal(got, _np_counts(labels, neighbours))


def test_neighbour_label_counts_with_asymmetric_labels():
  labels, neighbours = _labels_and_neighbours(n=7, k=2, seed=3)
  labels = labels.copy()
  labels[0, 1], labels[1, 0] = 1.0, -1.0
  np.testing.assert_array_equal(np.asarray(ops.neighbour_label_counts(labels, neighbours)),
                                _np_counts(labels, neighbours))


@pytest.mark.parametrize("rho_similar, rho_dissimilar", [(0.0, 0.0), (0.3, 0.1), (0.0, 0.5)])
def test_distill_pairs_keeps_labels_whose_posterior_passes_the_bound(rho_similar,
                                                                    rho_dissimilar):
  labels, neighbours = _labels_and_neighbours(n=10, k=3, seed=1)
  counts = _np_counts(labels, neighbours)
  k2 = neighbours.shape[1]**2
  want = np.zeros(labels.shape, np.int8)
  for i in range(len(labels)):
    for j in range(len(labels)):
      if labels[i, j] == 1 and counts[0, i, j] / k2 > (1 + rho_dissimilar) / 2:
        want[i, j] = 1
      elif labels[i, j] == -1 and counts[1, i, j] / k2 > (1 + rho_similar) / 2:
        want[i, j] = -1
  got = np.asarray(ops.distill_pairs(labels, neighbours, rho_similar=rho_similar,
                                     rho_dissimilar=rho_dissimilar))
  assert got.dtype == np.int8
  np.testing.assert_array_equal(got, want)
  # Distilled pairs keep their own label; some of each kind are dropped or kept.
  assert np.all((got == 0) | (got == labels))
  assert np.any((labels != 0) & (got == 0))


def test_distill_pairs_bound_is_strict():
  # K = 2: four neighbour pairs; with rho = 0 exactly half (2 of 4) does not pass 1/2.
  labels = np.array([[1, 1, -1], [1, 1, -1], [-1, -1, 1]], np.float32)
  neighbours = np.array([[0, 2], [1, 0], [2, 1]], np.int32)
  got = np.asarray(ops.distill_pairs(labels, neighbours, rho_similar=0.0, rho_dissimilar=0.0))
  counts = _np_counts(labels, neighbours)
  assert counts[0, 0, 1] == 2 and got[0, 1] == 0
  assert counts[0, 1, 1] == 4 and got[1, 1] == 1


def test_distill_pairs_rejects_flip_rates():
  labels, neighbours = _labels_and_neighbours()
  with pytest.raises(ValueError, match="flip rates"):
    ops.distill_pairs(labels, neighbours, rho_similar=0.6, rho_dissimilar=0.5)
  with pytest.raises(ValueError, match="flip rates"):
    ops.distill_pairs(labels, neighbours, rho_similar=-0.1, rho_dissimilar=0.0)


def _np_likelihood(codes, labels, scale):
  total, count = 0.0, 0
  for i in range(len(codes)):
    for j in range(len(codes)):
      if labels[i, j] == 0:
        continue
      omega = scale * float(np.dot(codes[i], codes[j]))
      p_similar = 1.0 / (1.0 + math.exp(-omega))
      total -= math.log(p_similar if labels[i, j] == 1 else 1.0 - p_similar)
      count += 1
  return total / max(count, 1)


def test_pairwise_likelihood_loss_value_and_gradient():
  rng = np.random.default_rng(2)
  codes = np.tanh(rng.normal(size=(6, 8)))
  labels, _ = _labels_and_neighbours(n=6, seed=2)
  fn = lambda c: ops.pairwise_likelihood_loss(c, jnp.asarray(labels), scale=0.5)
  got = float(fn(jnp.asarray(codes, jnp.float32)))
  np.testing.assert_allclose(got, _np_likelihood(codes, labels, 0.5), rtol=1e-5)
  # Gradient against central differences of the NumPy formula.
  grad = np.asarray(jax.grad(fn)(jnp.asarray(codes, jnp.float32)))
  eps = 1e-5
  want = np.zeros_like(codes)
  for idx in np.ndindex(codes.shape):
    up, down = codes.copy(), codes.copy()
    up[idx] += eps
    down[idx] -= eps
    want[idx] = (_np_likelihood(up, labels, 0.5) - _np_likelihood(down, labels, 0.5)) / (2 * eps)
  np.testing.assert_allclose(grad, want, rtol=1e-3, atol=1e-6)


def test_pairwise_likelihood_loss_is_stable_and_zero_without_pairs():
  codes = jnp.full((3, 64), 1.0)
  labels = jnp.array([[0, -1, 1], [-1, 0, 0], [1, 0, 0]], jnp.float32)
  # Omega = 32: -log(1 - sigmoid(32)) = 32 + log(1 + e^-32) for the -1 pairs, ~0 for +1.
  got = float(ops.pairwise_likelihood_loss(codes, labels, scale=0.5))
  np.testing.assert_allclose(got, (2 * 32.0 + 2 * math.log1p(math.exp(-32.0))) / 4, rtol=1e-6)
  assert float(ops.pairwise_likelihood_loss(codes, jnp.zeros((3, 3)), scale=0.5)) == 0.0


def test_pairwise_likelihood_loss_rejects_shapes():
  with pytest.raises(ValueError, match="labels must be"):
    ops.pairwise_likelihood_loss(jnp.ones((3, 4)), jnp.ones((2, 2)), scale=0.5)
  with pytest.raises(ValueError, match="codes must be 2-D"):
    ops.pairwise_likelihood_loss(jnp.ones((3,)), jnp.ones((3, 3)), scale=0.5)
