"""ops.half_pair_cosines / cosine_pair_loss / cubic_penalty (GreedyHash's and Bi-half's
objective) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pair_cosine_reference as ref
from ucsh_jax import ops


@pytest.mark.parametrize("n", [2, 9, 16])
def test_pair_cosines_match_numpy(n):
  x = np.random.default_rng(n).normal(size=(n, 7)).astype(np.float32)
  x[0] = 0.0  # A zero row: cosine 0 (norms clamped at 1e-8), finite.
  got = np.asarray(jax.jit(ops.half_pair_cosines)(x))
  assert got.shape == (n // 2,)
  np.testing.assert_allclose(got, ref.pair_cosines(x), rtol=1e-5, atol=1e-6)
  assert got[0] == 0.0


def test_pair_loss_value_and_gradient_match_numpy():
  rng = np.random.default_rng(0)
  codes = np.where(rng.random((10, 8)) < 0.5, 1.0, -1.0).astype(np.float32)
  codes[1, :] = 0.3 * rng.normal(size=8)  # Not only +-1: the gradient's second term shows.
  x = np.abs(rng.normal(size=(10, 5))).astype(np.float32)
  value, (grad_b, grad_x) = jax.value_and_grad(ops.cosine_pair_loss, argnums=(0, 1))(
      jnp.asarray(codes), jnp.asarray(x))
  want, want_grad = ref.pair_loss_and_grad(codes, x)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad_b), want_grad, rtol=1e-4, atol=1e-7)
  # The features' cosines are a target: no gradient.
  np.testing.assert_array_equal(np.asarray(grad_x), 0.0)


def test_odd_batch_drops_the_last_row():
  rng = np.random.default_rng(1)
  b = rng.normal(size=(7, 4)).astype(np.float32)
  x = rng.normal(size=(7, 3)).astype(np.float32)
  np.testing.assert_allclose(float(ops.cosine_pair_loss(b, x)),
                             float(ops.cosine_pair_loss(b[:6], x[:6])), rtol=1e-6)


def test_cubic_penalty_value_and_gradient_match_numpy():
  h = np.random.default_rng(2).normal(size=(6, 5)).astype(np.float32) * 2
  value, grad = jax.value_and_grad(ops.cubic_penalty)(jnp.asarray(h))
  want, want_grad = ref.cubic_and_grad(h)
  np.testing.assert_allclose(float(value), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-8)


def test_bad_shapes():
  with pytest.raises(ValueError, match="2-D"):
    ops.half_pair_cosines(jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match="differ in rows"):
    ops.cosine_pair_loss(jnp.zeros((4, 2)), jnp.zeros((6, 2)))
