"""TBH's primitives (ucsh_jax/ops/_tbh.py) against independent NumPy formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import ops


def _codes(seed, n=7, k=6):
  codes = (np.random.default_rng(seed).uniform(size=(n, k)) < 0.5).astype(np.float32)
  codes[3] = codes[1]  # two identical codes: distance 0 off the diagonal
  codes[4] = 1 - codes[0]  # two opposite codes: adjacency 0
  return codes


def test_stochastic_binary_value_and_straight_through_gradient():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  eps = rng.uniform(size=(5, 4)).astype(np.float32)
  prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
  codes, vjp = jax.vjp(ops.stochastic_binary, jnp.asarray(logits), jnp.asarray(eps))
  np.testing.assert_array_equal(codes, (prob > eps).astype(np.float32))
  g = rng.normal(size=(5, 4)).astype(np.float32)
  d_logits, d_eps = vjp(jnp.asarray(g))
  np.testing.assert_allclose(d_logits, prob * (1 - prob) * g, rtol=1e-5)
  np.testing.assert_array_equal(d_eps, 0)
  half = ops.stochastic_binary(jnp.asarray(logits), 0.5)
  np.testing.assert_array_equal(half, (logits > 0).astype(np.float32))


def test_hamming_adjacency_value_and_gradient():
  codes = _codes(1)
  k = codes.shape[1]
  hamming = (codes[:, None, :] != codes[None, :, :]).sum(-1).astype(np.float64)
  np.testing.assert_allclose(ops.hamming_adjacency(jnp.asarray(codes), 1.4),
                             (1 - hamming / k)**1.4, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ops.hamming_adjacency(jnp.asarray(codes), 1.0), 1 - hamming / k,
                             rtol=1e-6, atol=1e-7)
  # Gradient: A = (1 - |c| / k)^p with c_ij = b_i . (b_j - 1) + (b_i - 1) . b_j, and
  # d|c|/dc = sign(c) (0 at c = 0, as TensorFlow's Abs). dc_ij/db_i = 2 b_j - 1 and
  # dc_ij/db_j = 2 b_i - 1.
  w = np.random.default_rng(2).normal(size=hamming.shape)
  grad = jax.grad(lambda b: jnp.sum(jnp.asarray(w) * ops.hamming_adjacency(b, 1.4)))(
      jnp.asarray(codes))
  b = codes.astype(np.float64)
  c = b @ (b - 1).T + (b - 1) @ b.T
  d_c = w * 1.4 * np.maximum(1 - np.abs(c) / k, 0)**0.4 * (-np.sign(c) / k)
  want = d_c @ (2 * b - 1) + d_c.T @ (2 * b - 1)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_normalized_adjacency():
  rng = np.random.default_rng(3)
  a = rng.uniform(size=(6, 6))
  a = (a + a.T) / 2 + np.eye(6)
  deg = a.sum(1) + 1e-8
  want = np.diag(deg**-0.5) @ a @ np.diag(deg**-0.5)
  np.testing.assert_allclose(ops.normalized_adjacency(jnp.asarray(a, jnp.float32)), want,
                             rtol=1e-5)


def test_binary_cross_entropy_keras_form():
  # In float32, as Keras computes it (1 - (1 - 1e-7) rounds there).
  p = np.array([0.0, 1e-9, 0.3, 0.9, 1.0], np.float32)
  e = np.float32(1e-7)
  clipped = np.clip(p, e, np.float32(1) - e)
  for t in (0.0, 1.0):
    t = np.float32(t)
    want = -(t * np.log(clipped + e) + (1 - t) * np.log(np.float32(1) - clipped + e))
    np.testing.assert_allclose(ops.binary_cross_entropy(t, jnp.asarray(p, jnp.float32)), want,
                               rtol=1e-5)
  # Saturated probabilities pass no gradient (the clip), as in Keras.
  grad = jax.grad(lambda q: ops.binary_cross_entropy(1.0, q).sum())(jnp.float32([0.0, 0.5]))
  np.testing.assert_allclose(grad, [0.0, -1 / (0.5 + e)], rtol=1e-5)
