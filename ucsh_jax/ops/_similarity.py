"""Cosine similarities of deep features, the SSDH thresholds, and the other similarity targets."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Rows with a smaller norm are treated as zero vectors (cosine 0 with everything).
_EPS = 1e-8
# Histogram of cosine distances: bins of width 0.01 on [0, 1] (DESIGN.md section 2).
_NUM_BINS = 100


class ThresholdEstimate(NamedTuple):
  """SSDH thresholds; `threshold` and `threshold_right` are similarities, the rest distances."""
  threshold: jax.Array  # s_t = 1 - 2 d_t, d_t = mode - 2 sigma_left.
  threshold_right: jax.Array  # 1 - 2 d_r, d_r = mode + 2 sigma_right (SSDH's right threshold).
  mode: jax.Array  # Left edge of the fullest histogram bin.
  sigma_left: jax.Array  # RMS of (mode - d) over pair distances d < mode.
  sigma_right: jax.Array  # RMS of (d - mode) over pair distances d > mode.


def _check_features(x, name):
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D (n, d), got shape {x.shape}")


def _cosine(x_NxD: jax.Array, precision=None) -> jax.Array:
  sq_N = jnp.sum(jnp.square(x_NxD), axis=-1, keepdims=True)
  unit_NxD = x_NxD * jax.lax.rsqrt(jnp.maximum(sq_N, _EPS**2))
  return jnp.matmul(unit_NxD, unit_NxD.T, precision=precision)


def pairwise_similarity(x: jax.Array) -> jax.Array:
  """S_ij = 1 - 2 (1 - cos(x_i, x_j)) = 2 cos(x_i, x_j) - 1 (paper eq. 2).

  Args:
    x: (n, d) features. A zero row has cosine 0 with every row (itself included) and a
      finite gradient.

  Returns:
    (n, n) similarity matrix, differentiable with respect to x.
  """
  x = jnp.asarray(x)
  _check_features(x, "x")
  return 2.0 * _cosine(x) - 1.0


def similarity_threshold(x: jax.Array) -> ThresholdEstimate:
  """SSDH half-Gaussian estimate of the similarity threshold s_t (DESIGN.md section 2).

  Over the cosine distances d = 1 - cos(x_i, x_j) of the pairs i < j (clipped to [0, 2]):
  histogram with 100 bins of width 0.01 on [0, 1] (distances above 1 fall in no bin, 1
  itself in the last one); mode m = left edge of the fullest bin (the first on ties);
  sigma_left = sqrt(mean((m - d)^2 over d < m)), sigma_right likewise over d > m (0 when
  there is no such pair); d_t = m - 2 sigma_left and s_t = 1 - 2 d_t; SSDH's right threshold
  d_r = m + 2 sigma_right gives threshold_right = 1 - 2 d_r.

  Args:
    x: (n, d) features, n >= 2; the caller subsamples (a few thousand rows at most).

  Returns:
    ThresholdEstimate of float32 scalars. No gradient is meant to flow through it.
  """
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  _check_features(x, "x")
  if x.shape[0] < 2:
    raise ValueError(f"x needs at least 2 rows to form a pair, got shape {x.shape}")
  return _threshold(x)


@jax.jit
def _threshold(x):
  n = x.shape[0]
  # Full float32 precision: the histogram bins are 0.01 wide.
  dist_NxN = jnp.clip(1.0 - _cosine(x, jax.lax.Precision.HIGHEST), 0.0, 2.0)
  upper_NxN = jnp.triu(jnp.ones((n, n), jnp.bool_), k=1)
  bin_NxN = jnp.minimum(jnp.floor(dist_NxN * _NUM_BINS), _NUM_BINS - 1).astype(jnp.int32)
  in_range_NxN = upper_NxN & (dist_NxN <= 1.0)
  counts = jnp.zeros((_NUM_BINS,), jnp.int32).at[bin_NxN.ravel()].add(
      in_range_NxN.ravel().astype(jnp.int32))
  mode = jnp.argmax(counts).astype(jnp.float32) / _NUM_BINS

  def rms(mask_NxN):
    count = jnp.sum(mask_NxN)
    total = jnp.sum(jnp.where(mask_NxN, jnp.square(dist_NxN - mode), 0.0))
    return jnp.sqrt(total / jnp.maximum(count, 1))

  sigma_left = rms(upper_NxN & (dist_NxN < mode))
  sigma_right = rms(upper_NxN & (dist_NxN > mode))
  threshold = 1.0 - 2.0 * (mode - 2.0 * sigma_left)
  threshold_right = 1.0 - 2.0 * (mode + 2.0 * sigma_right)
  return ThresholdEstimate(threshold, threshold_right, mode, sigma_left, sigma_right)


def ssdh_similarity(similarity: jax.Array, threshold: jax.Array,
                    threshold_right: jax.Array) -> jax.Array:
  """SSDH's pairwise targets: +1 above `threshold`, -1 below `threshold_right`, 0 between.

  In distances: similar when d < d_t = m - 2 sigma_left, dissimilar when d > d_r =
  m + 2 sigma_right, ignored otherwise (`similarity_threshold` gives both).

  Args:
    similarity: (n, n) similarities s_ij = 1 - 2 d_ij (e.g. `pairwise_similarity`).
    threshold, threshold_right: scalars, threshold >= threshold_right.

  Returns:
    (n, n) float32 in {+1, 0, -1}; no gradient.
  """
  s = jax.lax.stop_gradient(jnp.asarray(similarity, jnp.float32))
  if s.ndim != 2 or s.shape[0] != s.shape[1]:
    raise ValueError(f"similarity must be a square (n, n) matrix, got shape {s.shape}")
  return jnp.where(s > threshold, 1.0, jnp.where(s < threshold_right, -1.0, 0.0))


def cosine_neighbours(x: jax.Array, num_neighbours: int) -> jax.Array:
  """The `num_neighbours` rows of largest cosine with each row (itself included), by index.

  Args:
    x: (n, d) features.
    num_neighbours: m, 1 <= m <= n.

  Returns:
    (n, m) int32 row indices, most similar first (lowest index first on ties).
  """
  x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
  _check_features(x, "x")
  if not 1 <= num_neighbours <= x.shape[0]:
    raise ValueError(f"num_neighbours must be in [1, n = {x.shape[0]}], got {num_neighbours}")
  return _top_cosine(x, num_neighbours)


@functools.partial(jax.jit, static_argnames="num_neighbours")
def _top_cosine(x_NxD, num_neighbours):
  cos_NxN = _cosine(x_NxD, jax.lax.Precision.HIGHEST)
  # The diagonal may round below 1: put each row first among its own neighbours.
  cos_NxN = jnp.where(jnp.eye(x_NxD.shape[0], dtype=jnp.bool_), jnp.inf, cos_NxN)
  return jax.lax.top_k(cos_NxN, num_neighbours)[1].astype(jnp.int32)


def neighbour_similarity(neighbours: jax.Array, index: jax.Array) -> jax.Array:
  """Neighbour-rank targets of a batch: S_ij = +1 if i, j are neighbours (either way), else -1.

  Args:
    neighbours: (n, m) int, the training-set indices of the neighbours of each batch item
      (rows of `cosine_neighbours` over the training set, looked up by `index`).
    index: (n,) int, the training-set index of each batch item.

  Returns:
    (n, n) float32 in {+1, -1}, symmetric: +1 where index_j is among the neighbours of i or
    index_i among those of j.
  """
  if neighbours.ndim != 2 or index.shape != (neighbours.shape[0],):
    raise ValueError(f"neighbours must be (n, m) and index (n,), got shapes {neighbours.shape} "
                     f"and {index.shape}")
  hit_NxN = jnp.any(neighbours[:, None, :] == index[None, :, None], axis=-1)
  return jnp.where(hit_NxN | hit_NxN.T, 1.0, -1.0)
