"""The unsupervised objective shared by GreedyHash's and Bi-half's authors' code: the
cosine similarity of the codes of a pair of images should equal that of their features.

Both pair the first half of a batch with the second half, row i with row i + N/2
(`F.cosine_similarity(b[:N//2], b[N//2:])`), and take `F.mse_loss` of the codes' cosines
against the features' (detached) cosines: the mean over the N/2 pairs. With an odd N the last
row is dropped (cisip-FIRe's rule). GreedyHash adds a cubic penalty on the hash-layer outputs.
"""

import jax
import jax.numpy as jnp

# torch.nn.functional.cosine_similarity's eps: each norm is clamped below at it.
_EPS = 1e-8


def half_pair_cosines(x_NxD: jax.Array) -> jax.Array:
  """cos(x_i, x_{i+P}) for i < P = N // 2 (the last row dropped when N is odd): (P,) float32.

  Norms are clamped below at 1e-8 like torch's cosine_similarity (a zero row gives 0).
  """
  x_NxD = jnp.asarray(x_NxD, jnp.float32)
  if x_NxD.ndim != 2 or x_NxD.shape[0] < 2:
    raise ValueError(f"x must be 2-D (n, d) with n >= 2, got shape {x_NxD.shape}")
  p = x_NxD.shape[0] // 2
  a_PxD, b_PxD = x_NxD[:p], x_NxD[p:2 * p]
  # sqrt(max(|a|^2, eps^2)) = max(|a|, eps), with a finite gradient at a zero row.
  norm_a = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(a_PxD), axis=-1), _EPS**2))
  norm_b = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(b_PxD), axis=-1), _EPS**2))
  return jnp.sum(a_PxD * b_PxD, axis=-1) / (norm_a * norm_b)


def cosine_pair_loss(codes_NxK: jax.Array, features_NxD: jax.Array) -> jax.Array:
  """mean_i (cos(b_i, b_{i+P}) - cos(x_i, x_{i+P}))^2 over the P = N // 2 pairs; the
  features' cosines are a target (no gradient). Scalar float32."""
  if codes_NxK.shape[0] != features_NxD.shape[0]:
    raise ValueError(f"codes {codes_NxK.shape} and features {features_NxD.shape} differ in rows")
  target_P = jax.lax.stop_gradient(half_pair_cosines(features_NxD))
  return jnp.mean(jnp.square(half_pair_cosines(codes_NxK) - target_P))


def cubic_penalty(h_NxK: jax.Array) -> jax.Array:
  """GreedyHash's penalty mean |(|h| - 1)^3| = mean ||h| - 1|^3 over all entries: pulls the
  hash layer's outputs towards +-1 so that sign(h) changes them little. Scalar float32."""
  h_NxK = jnp.asarray(h_NxK, jnp.float32)
  return jnp.mean(jnp.abs(jnp.abs(h_NxK) - 1.0) ** 3)
