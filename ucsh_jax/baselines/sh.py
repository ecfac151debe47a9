"""SH: spectral hashing with PCA-aligned sinusoidal eigenfunctions.

Reference: Weiss, Torralba & Fergus, "Spectral hashing", NIPS 2009. The data are rotated to
their top p = min(k, d) principal directions and each direction j is modelled as uniform on the
box [a_j, b_j] spanned by the training data. The one-dimensional Laplacian eigenfunctions there
are y = sin(pi/2 + m pi / (b_j - a_j) * (x_j - a_j)) for modes m = 1, 2, ..., with eigenvalues
increasing in the frequency m / (b_j - a_j). The k bits are the signs of the k eigenfunctions
of smallest eigenvalue over all directions and modes (ties go to the earlier direction, then the
lower mode). Training is deterministic: `key` is accepted for a uniform interface and unused.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ucsh_jax.baselines import _common


class SHParams(NamedTuple):
  """The PCA rotation, the box, and the eigenfunction of each of the k bits.

  mean: (d,); pca: (d, p) orthonormal principal directions, p = min(k, d);
  box_min, box_max: (p,) extent of the projected training data;
  dims: (k,) int32 direction of each bit; modes: (k,) int32 mode m >= 1 of each bit.
  """

  mean: jax.Array
  pca: jax.Array
  box_min: jax.Array
  box_max: jax.Array
  dims: jax.Array
  modes: jax.Array


def _project(mean_D: jax.Array, pca_DxP: jax.Array, x_NxD: jax.Array) -> jax.Array:
  return jnp.matmul(x_NxD - mean_D[None, :], pca_DxP, precision=_common.HIGHEST)


@functools.partial(jax.jit, static_argnames="num_bits")
def fit(train_features: jax.typing.ArrayLike, num_bits: int, key: jax.Array) -> SHParams:
  """Fits SH with k = `num_bits` on (n, d) training features; `key` is unused."""
  del key  # Deterministic.
  x_NxD = _common.as_features(train_features, "train_features")
  _common.check_num_bits(num_bits)
  num_dims = min(num_bits, x_NxD.shape[1])
  mean_D, pca_DxP, _ = _common.pca(x_NxD, num_dims)
  proj_NxP = _project(mean_D, pca_DxP, x_NxD)
  box_min_P, box_max_P = proj_NxP.min(axis=0), proj_NxP.max(axis=0)
  # Any one direction contributes at most k of the k smallest eigenvalues, so modes 1..k suffice.
  modes_K = jnp.arange(1, num_bits + 1)
  freqs_PxK = modes_K[None, :] / (box_max_P - box_min_P)[:, None]
  chosen_K = jnp.argsort(freqs_PxK.ravel(), stable=True)[:num_bits]
  return SHParams(
      mean=mean_D, pca=pca_DxP, box_min=box_min_P, box_max=box_max_P,
      dims=(chosen_K // num_bits).astype(jnp.int32),
      modes=(chosen_K % num_bits + 1).astype(jnp.int32))


@jax.jit
def encode(params: SHParams, features: jax.typing.ArrayLike) -> jax.Array:
  """(n, d) features -> (n, k) +-1 codes: bit i = sign(y_i(x)), its eigenfunction; sign(0) = +1."""
  x_NxD = _common.as_features(features, "features")
  _common.check_dim(x_NxD, params.mean.shape[0])
  proj_NxK = _project(params.mean, params.pca, x_NxD)[:, params.dims]
  box_min_K = params.box_min[params.dims]
  omega_K = params.modes * jnp.pi / (params.box_max[params.dims] - box_min_K)
  return _common.sign_codes(
      jnp.sin(jnp.pi / 2 + omega_K[None, :] * (proj_NxK - box_min_K[None, :])))
