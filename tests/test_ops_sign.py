"""Tests of ops.sign_ste against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import ops


def test_forward_matches_numpy_sign_with_zero_positive():
  x = np.array([[-2.0, -0.0, 0.0, 1e-7], [3.0, -1e-7, 0.5, -4.0]], np.float32)
  got = jax.jit(ops.sign_ste)(x)
  want = np.where(x >= 0, 1.0, -1.0)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert got.dtype == jnp.float32


def test_gradient_is_identity():
  x = jax.random.normal(jax.random.key(0), (5, 7))
  weights = jax.random.normal(jax.random.key(1), (5, 7))
  grad = jax.jit(jax.grad(lambda v: jnp.sum(weights * ops.sign_ste(v))))(x)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(weights), rtol=0, atol=0)


def test_vmap_matches_batch_call():
  x = jax.random.normal(jax.random.key(2), (3, 4, 6))
  np.testing.assert_array_equal(
      np.asarray(jax.vmap(ops.sign_ste)(x)), np.asarray(ops.sign_ste(x)))
