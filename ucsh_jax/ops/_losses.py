"""The UCSH losses L_2, L_V, L_C and L_S (paper eqs. 1, 3, 5, 6; DESIGN.md section 2)."""

import math
from typing import Optional

import jax
import jax.numpy as jnp

_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> None:
  if reduction not in _REDUCTIONS:
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_ndim(x: jax.Array, ndim: int, name: str, layout: str) -> None:
  if x.ndim != ndim:
    raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {x.shape}")


def similarity_loss(codes: jax.Array,
                    similarity: jax.Array,
                    *,
                    pair_weights: Optional[jax.Array] = None,
                    reduction: str = "mean") -> jax.Array:
  """L_2 (eq. 3): sum over all pairs (i, j) of w_ij (k S_ij - b_i . b_j)^2.

  With w_ij = |S_ij| and S in {+1, 0, -1} this is SSDH's loss, k^2 sum |S_ij| (S_ij -
  b_i . b_j / k)^2: the pairs with S_ij = 0 are ignored.

  Args:
    codes: (n, k) codes b (+-1 from `sign_ste`, or tanh relaxations).
    similarity: (n, n) target similarities S; stop-gradient.
    pair_weights: optional (n, n) weights w_ij (default 1); stop-gradient.
    reduction: "sum" is the literal double sum over the n^2 pairs; "mean" is that sum
      divided by n^2 k^2 (scale-free across code lengths; the ignored pairs still count in
      n^2).

  Returns:
    Scalar loss.

  Example:
    >>> similarity_loss(sign_ste(h_NxK), pairwise_similarity(x_NxD))
  """
  _check_reduction(reduction)
  _check_ndim(codes, 2, "codes", "(n, k)")
  n, k = codes.shape
  if similarity.shape != (n, n):
    raise ValueError(
        f"similarity must be (n, n) = {(n, n)} for codes of shape {codes.shape}, "
        f"got shape {similarity.shape}")
  target_NxN = k * jax.lax.stop_gradient(similarity)
  sq_NxN = jnp.square(target_NxN - codes @ codes.T)
  if pair_weights is not None:
    if pair_weights.shape != (n, n):
      raise ValueError(f"pair_weights must be (n, n) = {(n, n)}, got shape {pair_weights.shape}")
    sq_NxN = jax.lax.stop_gradient(pair_weights) * sq_NxN
  if reduction == "sum":
    return jnp.sum(sq_NxN)
  return jnp.mean(sq_NxN) / k**2


def _check_vae_inputs(features, reconstruction, logits):
  _check_ndim(features, 2, "features", "(n, d)")
  _check_ndim(logits, 2, "logits", "(n, k)")
  if reconstruction.shape != features.shape:
    raise ValueError(
        f"reconstruction must have the shape of features {features.shape}, "
        f"got shape {reconstruction.shape}")
  if logits.shape[0] != features.shape[0]:
    raise ValueError(
        f"logits must have n = {features.shape[0]} rows like features, "
        f"got shape {logits.shape}")


def reconstruction_loss(features: jax.Array,
                        reconstruction: jax.Array,
                        *,
                        reduction: str = "mean") -> jax.Array:
  """The reconstruction part of L_V: sum_i sum_d (x_id - xhat_id)^2.

  Args:
    features: (n, d) target features x; stop-gradient.
    reconstruction: (n, d) decoder output xhat.
    reduction: "sum" is the literal sum; "mean" divides it by n d.

  Returns:
    Scalar loss.
  """
  _check_reduction(reduction)
  _check_ndim(features, 2, "features", "(n, d)")
  if reconstruction.shape != features.shape:
    raise ValueError(
        f"reconstruction must have the shape of features {features.shape}, "
        f"got shape {reconstruction.shape}")
  sq_NxD = jnp.square(jax.lax.stop_gradient(features) - reconstruction)
  return jnp.sum(sq_NxD) if reduction == "sum" else jnp.mean(sq_NxD)


def kl_loss(logits: jax.Array, *, reduction: str = "mean") -> jax.Array:
  """The KL part of L_V: sum_i KL(Bernoulli(sigmoid(h_i)) || Bernoulli(1/2)).

  Per sample and bit, with p = sigmoid(h): p log p + (1 - p) log(1 - p) + log 2, computed
  from the logits with log_sigmoid so it is finite for any h.

  Args:
    logits: (n, k) hash-layer logits h (the encoder's Bernoulli parameters).
    reduction: "sum" is the literal sum; "mean" divides it by n k.

  Returns:
    Scalar loss (>= 0).
  """
  _check_reduction(reduction)
  _check_ndim(logits, 2, "logits", "(n, k)")
  log_p_NxK = jax.nn.log_sigmoid(logits)
  log_q_NxK = jax.nn.log_sigmoid(-logits)
  p_NxK = jnp.exp(log_p_NxK)
  kl_NxK = p_NxK * log_p_NxK + (1.0 - p_NxK) * log_q_NxK + math.log(2.0)
  return jnp.sum(kl_NxK) if reduction == "sum" else jnp.mean(kl_NxK)


def vae_loss(features: jax.Array,
             reconstruction: jax.Array,
             logits: jax.Array,
             *,
             reduction: str = "mean") -> jax.Array:
  """L_V (eq. 1): squared reconstruction error + KL(Bernoulli(sigmoid(h)) || Bernoulli(1/2)).

  `reconstruction_loss + kl_loss` with the same reduction: "sum" returns
  sum_i (err_i + kl_i); "mean" returns mean_i (err_i / d + kl_i / k) (mean-over-dims error
  plus mean-over-bits KL, averaged over samples).

  Args:
    features: (n, d) target features x; stop-gradient.
    reconstruction: (n, d) decoder output xhat.
    logits: (n, k) hash-layer logits h (the encoder's Bernoulli parameters).
    reduction: "mean" or "sum".

  Returns:
    Scalar loss.
  """
  _check_reduction(reduction)
  _check_vae_inputs(features, reconstruction, logits)
  return (reconstruction_loss(features, reconstruction, reduction=reduction)
          + kl_loss(logits, reduction=reduction))


def clustering_loss(codes: jax.Array,
                    centers: jax.Array,
                    *,
                    reduction: str = "mean") -> jax.Array:
  """L_C (eq. 5): sum_i ||b_i - c_i||^2, c_i the hash center of image i's cluster.

  Args:
    codes: (n, k) codes b.
    centers: (n, k) the center of each image, e.g. `centers_NxK[assignments]`;
      stop-gradient.
    reduction: "sum" is the literal sum; "mean" is mean_i ||b_i - c_i||^2 / k.

  Returns:
    Scalar loss.
  """
  _check_reduction(reduction)
  _check_ndim(codes, 2, "codes", "(n, k)")
  if centers.shape != codes.shape:
    raise ValueError(
        f"centers must have the shape of codes {codes.shape} (one center per image), "
        f"got shape {centers.shape}")
  sq_NxK = jnp.square(codes - jax.lax.stop_gradient(centers))
  if reduction == "sum":
    return jnp.sum(sq_NxK)
  return jnp.mean(jnp.sum(sq_NxK, axis=-1)) / codes.shape[1]


def separating_loss(similarity: jax.Array,
                    threshold: jax.Array,
                    *,
                    reduction: str = "mean") -> jax.Array:
  """L_S (eq. 6): -sum over all pairs (i, j) of (s_ij - s_t)^2.

  Minimising it pushes similarities away from the threshold s_t; the gradient flows
  through `similarity` (compute it with `pairwise_similarity` on features that carry a
  gradient), not through the threshold.

  Args:
    similarity: (n, n) similarities s_ij.
    threshold: scalar s_t (e.g. `similarity_threshold(x).threshold`); stop-gradient.
    reduction: "sum" is the literal sum over the n^2 pairs; "mean" divides it by n^2.

  Returns:
    Scalar loss (<= 0).
  """
  _check_reduction(reduction)
  threshold = jnp.asarray(threshold)
  if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
    raise ValueError(f"similarity must be a square (n, n) matrix, got shape {similarity.shape}")
  if threshold.ndim != 0:
    raise ValueError(f"threshold must be a scalar, got shape {threshold.shape}")
  sq_NxN = jnp.square(similarity - jax.lax.stop_gradient(threshold))
  if reduction == "sum":
    return -jnp.sum(sq_NxN)
  return -jnp.mean(sq_NxN)
