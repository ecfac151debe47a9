"""Tests of the UCSH losses: values against NumPy, hand-derived gradients, shape errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucsh_jax import ops

N, K, D = 6, 8, 10


def _data(seed=0):
  rng = np.random.default_rng(seed)
  codes = np.where(rng.normal(size=(N, K)) >= 0, 1.0, -1.0).astype(np.float32)
  x = rng.normal(size=(N, D)).astype(np.float32)
  sim = (2 * rng.uniform(size=(N, N)) - 1).astype(np.float32)
  return codes, x, sim, rng


def _np_vae_terms(x, xhat, h):
  h = np.asarray(h, np.float64)
  p, q = 1.0 / (1.0 + np.exp(-h)), 1.0 / (1.0 + np.exp(h))
  err = ((x - xhat)**2).astype(np.float64)
  kl = -p * np.logaddexp(0.0, -h) - q * np.logaddexp(0.0, h) + np.log(2.0)
  return err, kl


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_similarity_loss_value_and_gradient(reduction):
  codes, _, sim, _ = _data()
  loss_fn = jax.jit(lambda b, s: ops.similarity_loss(b, s, reduction=reduction))
  residual = K * sim.astype(np.float64) - codes @ codes.T
  scale = 1.0 if reduction == "sum" else 1.0 / (N * N * K * K)
  np.testing.assert_allclose(float(loss_fn(codes, sim)), scale * np.sum(residual**2), rtol=1e-5)
  grad_b, grad_s = jax.grad(loss_fn, argnums=(0, 1))(codes, sim)
  want_b = -2.0 * scale * (residual + residual.T) @ codes
  np.testing.assert_allclose(np.asarray(grad_b), want_b, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad_s), np.zeros_like(sim))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_similarity_loss_ignores_zero_weight_pairs(reduction):
  codes, _, sim, rng = _data(6)
  ssdh = np.sign(sim) * (np.abs(sim) > 0.4)  # SSDH-like targets in {+1, 0, -1}.
  weights = np.abs(ssdh).astype(np.float32)
  loss_fn = jax.jit(lambda b: ops.similarity_loss(b, ssdh.astype(np.float32),
                                                  pair_weights=weights, reduction=reduction))
  residual = K * ssdh - codes @ codes.T
  scale = 1.0 if reduction == "sum" else 1.0 / (N * N * K * K)
  np.testing.assert_allclose(float(loss_fn(codes)), scale * np.sum(weights * residual**2),
                             rtol=1e-5)
  want_b = -2.0 * scale * ((weights * residual) + (weights * residual).T) @ codes
  np.testing.assert_allclose(np.asarray(jax.grad(loss_fn)(codes)), want_b, rtol=1e-5,
                             atol=1e-6)
  assert 0 < weights.sum() < N * N  # Some pairs really are ignored.


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_vae_parts_add_up_to_vae_loss(reduction):
  _, x, _, rng = _data(7)
  xhat = rng.normal(size=(N, D)).astype(np.float32)
  h = (3 * rng.normal(size=(N, K))).astype(np.float32)
  err, kl = _np_vae_terms(x, xhat, h)
  rec = float(ops.reconstruction_loss(x, xhat, reduction=reduction))
  kld = float(ops.kl_loss(h, reduction=reduction))
  if reduction == "sum":
    np.testing.assert_allclose([rec, kld], [err.sum(), kl.sum()], rtol=1e-5)
  else:
    np.testing.assert_allclose([rec, kld], [err.mean(), kl.mean()], rtol=1e-5)
  np.testing.assert_allclose(float(ops.vae_loss(x, xhat, h, reduction=reduction)), rec + kld,
                             rtol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_vae_loss_value_and_gradient(reduction):
  _, x, _, rng = _data(1)
  xhat = rng.normal(size=(N, D)).astype(np.float32)
  h = (3 * rng.normal(size=(N, K))).astype(np.float32)
  h[0, 0] = 60.0  # Saturated logit: the KL stays finite.
  err, kl = _np_vae_terms(x, xhat, h)
  loss_fn = jax.jit(lambda a, b, c: ops.vae_loss(a, b, c, reduction=reduction))
  if reduction == "sum":
    want, scale_err, scale_kl = err.sum() + kl.sum(), 1.0, 1.0
  else:
    want = np.mean(err.mean(axis=1) + kl.mean(axis=1))
    scale_err, scale_kl = 1.0 / (N * D), 1.0 / (N * K)
  np.testing.assert_allclose(float(loss_fn(x, xhat, h)), want, rtol=1e-5)
  g_x, g_xhat, g_h = jax.grad(loss_fn, argnums=(0, 1, 2))(x, xhat, h)
  np.testing.assert_array_equal(np.asarray(g_x), np.zeros_like(x))
  np.testing.assert_allclose(np.asarray(g_xhat), -2.0 * scale_err * (x - xhat), rtol=1e-5)
  p = 1.0 / (1.0 + np.exp(-h.astype(np.float64)))
  np.testing.assert_allclose(np.asarray(g_h), scale_kl * p * (1 - p) * h, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_clustering_loss_value_and_gradient(reduction):
  codes, _, _, rng = _data(2)
  centers = np.where(rng.normal(size=(N, K)) >= 0, 1.0, -1.0).astype(np.float32)
  relaxed = np.tanh(rng.normal(size=(N, K))).astype(np.float32)
  loss_fn = jax.jit(lambda b, c: ops.clustering_loss(b, c, reduction=reduction))
  scale = 1.0 if reduction == "sum" else 1.0 / (N * K)
  want = scale * np.sum((relaxed - centers)**2)
  np.testing.assert_allclose(float(loss_fn(relaxed, centers)), want, rtol=1e-5)
  g_b, g_c = jax.grad(loss_fn, argnums=(0, 1))(relaxed, centers)
  np.testing.assert_allclose(np.asarray(g_b), 2 * scale * (relaxed - centers), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(g_c), np.zeros_like(centers))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_separating_loss_value_and_gradient(reduction):
  _, _, sim, _ = _data(3)
  threshold = np.float32(0.3)
  loss_fn = jax.jit(lambda s, t: ops.separating_loss(s, t, reduction=reduction))
  scale = 1.0 if reduction == "sum" else 1.0 / (N * N)
  want = -scale * np.sum((sim - threshold)**2)
  np.testing.assert_allclose(float(loss_fn(sim, threshold)), want, rtol=1e-5)
  g_s, g_t = jax.grad(loss_fn, argnums=(0, 1))(sim, threshold)
  np.testing.assert_allclose(np.asarray(g_s), -2 * scale * (sim - threshold), rtol=1e-5)
  assert float(g_t) == 0.0


def test_separating_loss_gradient_reaches_features():
  _, x, _, _ = _data(4)
  loss = lambda v: ops.separating_loss(ops.pairwise_similarity(v), 0.2)
  grad = np.asarray(jax.grad(loss)(jnp.asarray(x)))
  eps, i, j = 1e-2, 2, 3
  bump = np.zeros_like(x)
  bump[i, j] = eps
  finite_diff = (float(loss(x + bump)) - float(loss(x - bump))) / (2 * eps)
  np.testing.assert_allclose(grad[i, j], finite_diff, rtol=2e-2, atol=1e-4)


def test_losses_vmap_over_a_leading_axis():
  codes, _, sim, _ = _data(5)
  batch_b, batch_s = np.stack([codes, -codes]), np.stack([sim, sim.T])
  got = jax.vmap(ops.similarity_loss)(batch_b, batch_s)
  want = [ops.similarity_loss(b, s) for b, s in zip(batch_b, batch_s)]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda: ops.similarity_loss(jnp.ones((4,)), jnp.ones((4, 4))), "codes"),
    (lambda: ops.similarity_loss(jnp.ones((4, 8)), jnp.ones((4, 5))), "similarity"),
    (lambda: ops.vae_loss(jnp.ones((4, 3)), jnp.ones((4, 2)), jnp.ones((4, 8))),
     "reconstruction"),
    (lambda: ops.vae_loss(jnp.ones((4, 3)), jnp.ones((4, 3)), jnp.ones((5, 8))), "logits"),
    (lambda: ops.vae_loss(jnp.ones((4,)), jnp.ones((4,)), jnp.ones((4, 8))), "features"),
    (lambda: ops.clustering_loss(jnp.ones((4, 8)), jnp.ones((8,))), "centers"),
    (lambda: ops.similarity_loss(jnp.ones((4, 8)), jnp.ones((4, 4)),
                                 pair_weights=jnp.ones((4, 3))), "pair_weights"),
    (lambda: ops.reconstruction_loss(jnp.ones((4, 3)), jnp.ones((4, 2))), "reconstruction"),
    (lambda: ops.kl_loss(jnp.ones((4,))), "logits"),
    (lambda: ops.separating_loss(jnp.ones((4, 5)), 0.1), "similarity"),
    (lambda: ops.separating_loss(jnp.ones((4, 4)), jnp.ones((2,))), "threshold"),
    (lambda: ops.clustering_loss(jnp.ones((4, 8)), jnp.ones((4, 8)), reduction="max"),
     "reduction"),
])
def test_shape_errors_name_the_argument(call, name):
  with pytest.raises(ValueError, match=name):
    call()
