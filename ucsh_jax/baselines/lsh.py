"""LSH: signs of random Gaussian projections of centred features.

Reference: Charikar, "Similarity estimation techniques from rounding algorithms", STOC 2002
(sign random projections; the "LSH" baseline of the hashing literature).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ucsh_jax.baselines import _common


class LSHParams(NamedTuple):
  """mean: (d,) training mean; projection: (d, k) standard normal entries."""

  mean: jax.Array
  projection: jax.Array


@functools.partial(jax.jit, static_argnames="num_bits")
def fit(train_features: jax.typing.ArrayLike, num_bits: int, key: jax.Array) -> LSHParams:
  """Draws k = `num_bits` random directions; only the mean is learned from (n, d) features."""
  x_NxD = _common.as_features(train_features, "train_features")
  _common.check_num_bits(num_bits)
  projection_DxK = jax.random.normal(key, (x_NxD.shape[1], num_bits), x_NxD.dtype)
  return LSHParams(mean=x_NxD.mean(axis=0), projection=projection_DxK)


@jax.jit
def encode(params: LSHParams, features: jax.typing.ArrayLike) -> jax.Array:
  """(n, d) features -> (n, k) +-1 codes sign((x - mean) @ projection), sign(0) = +1."""
  x_NxD = _common.as_features(features, "features")
  _common.check_dim(x_NxD, params.mean.shape[0])
  return _common.sign_codes(
      jnp.matmul(x_NxD - params.mean[None, :], params.projection, precision=_common.HIGHEST))
