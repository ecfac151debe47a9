"""SpH: spherical hashing, one hypersphere per bit.

Reference: Heo, Lee, He, Chang & Yoon, "Spherical hashing", CVPR 2012. Bit i is +1 inside the
sphere of pivot p_i and radius t_i. Training on n points keeps every radius at the median
distance (each bit is +1 on half of the points) and moves the pivots until every pair of bits is
+1 together on about n/4 points: with o_ij that count, pivot i moves by
(1/k) sum_j (o_ij - n/4) / (n/4) / 2 * (p_i - p_j), away from pivots it overlaps too much.
It stops once mean_j<i |o_ij - n/4| <= mean_tol * n/4 and std_j<i o_ij <= std_tol * n/4
(0.1 and 0.15 in the paper) or after `max_iters` updates. Pivots start at means of 5 random
training points, as in the authors' code.
"""

import functools
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

from ucsh_jax.baselines import _common

_POINTS_PER_INITIAL_PIVOT = 5


class SpHParams(NamedTuple):
  """pivots: (k, d) sphere centres; radii: (k,) sphere radii (Euclidean)."""

  pivots: jax.Array
  radii: jax.Array


def _distances(x_NxD: jax.Array, pivots_KxD: jax.Array) -> jax.Array:
  """(n, k) Euclidean distances between rows of `x_NxD` and pivots."""
  sq_NxK = (jnp.sum(jnp.square(x_NxD), axis=1, keepdims=True)
            - 2 * jnp.matmul(x_NxD, pivots_KxD.T, precision=_common.HIGHEST)
            + jnp.sum(jnp.square(pivots_KxD), axis=1)[None, :])
  return jnp.sqrt(jnp.maximum(sq_NxK, 0))


def _radii_and_overlaps(x_NxD: jax.Array, pivots_KxD: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Median radii (k,) and co-occurrence counts (k, k) of +1 bits on the points `x_NxD`."""
  dist_NxK = _distances(x_NxD, pivots_KxD)
  radii_K = jnp.median(dist_NxK, axis=0)
  inside_NxK = (dist_NxK <= radii_K[None, :]).astype(x_NxD.dtype)
  return radii_K, jnp.matmul(inside_NxK.T, inside_NxK, precision=_common.HIGHEST)


@functools.partial(jax.jit, static_argnames=("num_bits", "max_iters"))
def fit(
    train_features: jax.typing.ArrayLike,
    num_bits: int,
    key: jax.Array,
    *,
    max_iters: int = 100,
    mean_tol: float = 0.1,
    std_tol: float = 0.15,
) -> SpHParams:
  """Fits k = `num_bits` spheres to (n, d) training features (see the module docstring)."""
  x_NxD = _common.as_features(train_features, "train_features")
  _common.check_num_bits(num_bits)
  n = x_NxD.shape[0]
  quarter = n / 4
  off_diag_KxK = ~jnp.eye(num_bits, dtype=bool)
  init_idx = jax.random.randint(key, (num_bits, _POINTS_PER_INITIAL_PIVOT), 0, n)
  pivots_KxD = x_NxD[init_idx].mean(axis=1)

  def converged(overlaps_KxK):
    if num_bits == 1:
      return jnp.bool_(True)
    pairs = overlaps_KxK[jnp.triu_indices(num_bits, k=1)]
    return ((jnp.mean(jnp.abs(pairs - quarter)) <= mean_tol * quarter)
            & (jnp.std(pairs) <= std_tol * quarter))

  def cond(carry):
    step, _, overlaps_KxK = carry
    return (step < max_iters) & ~converged(overlaps_KxK)

  def body(carry):
    step, pivots_KxD, overlaps_KxK = carry
    coef_KxK = jnp.where(off_diag_KxK, 0.5 * (overlaps_KxK - quarter) / quarter, 0)
    # force_i = (1/k) sum_j coef_ij (p_i - p_j)
    force_KxD = (coef_KxK.sum(axis=1, keepdims=True) * pivots_KxD
                 - jnp.matmul(coef_KxK, pivots_KxD, precision=_common.HIGHEST)) / num_bits
    pivots_KxD = pivots_KxD + force_KxD
    return step + 1, pivots_KxD, _radii_and_overlaps(x_NxD, pivots_KxD)[1]

  _, overlaps_KxK = _radii_and_overlaps(x_NxD, pivots_KxD)
  _, pivots_KxD, _ = jax.lax.while_loop(cond, body, (0, pivots_KxD, overlaps_KxK))
  return SpHParams(pivots=pivots_KxD, radii=_radii_and_overlaps(x_NxD, pivots_KxD)[0])


@jax.jit
def encode(params: SpHParams, features: jax.typing.ArrayLike) -> jax.Array:
  """(n, d) features -> (n, k) +-1 codes: +1 where ||x - pivot_i|| <= radius_i."""
  x_NxD = _common.as_features(features, "features")
  _common.check_dim(x_NxD, params.pivots.shape[1])
  inside_NxK = _distances(x_NxD, params.pivots) <= params.radii[None, :]
  return jnp.where(inside_NxK, 1.0, -1.0).astype(x_NxD.dtype)
