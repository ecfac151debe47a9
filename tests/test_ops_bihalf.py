"""ops.bi_half / bi_half_assignment / bi_half_penalty against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pair_cosine_reference as ref
from ucsh_jax import ops


@pytest.mark.parametrize("n", [2, 7, 8, 33])
def test_assignment_matches_numpy(n):
  u = np.random.default_rng(n).normal(size=(n, 5)).astype(np.float32)
  got = np.asarray(jax.jit(ops.bi_half_assignment)(u))
  np.testing.assert_array_equal(got, ref.bi_half(u))
  # Each bit is +1 for exactly floor(N / 2) rows (the authors' int(N / 2)).
  np.testing.assert_array_equal((got > 0).sum(0), np.full(5, n // 2))


def test_ties_go_to_the_lower_row():
  u = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-2.0, 0.0]], np.float32)
  got = np.asarray(ops.bi_half_assignment(u))
  np.testing.assert_array_equal(got, [[1, 1], [1, 1], [-1, -1], [-1, -1]])
  np.testing.assert_array_equal(got, ref.bi_half(u))


def test_forward_is_the_assignment_exactly_and_gradient_is_identity():
  u = jax.random.normal(jax.random.key(0), (10, 6)) * 30.0
  w = jax.random.normal(jax.random.key(1), (10, 6))
  np.testing.assert_array_equal(np.asarray(ops.bi_half(u)), ref.bi_half(np.asarray(u)))
  grad = jax.grad(lambda v: jnp.sum(w * ops.bi_half(v)))(u)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(w))


def test_penalty_value_and_gradient_match_the_authors_backward_term():
  rng = np.random.default_rng(3)
  u = rng.normal(size=(12, 4)).astype(np.float32)
  b = ref.bi_half(u)
  gamma = 6.0
  value, grad = jax.value_and_grad(
      lambda v: ops.bi_half_penalty(v, ops.bi_half(v), gamma))(jnp.asarray(u))
  np.testing.assert_allclose(float(value), gamma / (2 * u.size) * np.sum((u - b)**2), rtol=1e-6)
  # The authors' backward adds gamma * (U - B) / B.numel().
  np.testing.assert_allclose(np.asarray(grad), gamma * (u - b) / b.size, rtol=1e-6, atol=1e-9)


def test_bad_shapes():
  with pytest.raises(ValueError, match="2-D"):
    ops.bi_half(jnp.zeros((4,)))
  with pytest.raises(ValueError, match="at least 2 rows"):
    ops.bi_half_assignment(jnp.zeros((1, 3)))
