"""ITQ: PCA to k dimensions, then a rotation that minimises the quantisation loss.

Reference: Gong & Lazebnik, "Iterative quantization: a Procrustean approach to learning binary
codes", CVPR 2011. With V the centred data projected on its top-k principal directions, ITQ
alternates B = sign(V R) and the orthogonal Procrustes solution R = W U^T, where
B^T V = U S W^T, so that the loss Q(B, R) = ||B - V R||_F^2 never increases.
"""

import functools
from typing import NamedTuple, Tuple, Union

import jax
import jax.numpy as jnp

from ucsh_jax.baselines import _common


class ITQParams(NamedTuple):
  """mean: (d,); pca: (d, k) orthonormal principal directions; rotation: (k, k) orthogonal."""

  mean: jax.Array
  pca: jax.Array
  rotation: jax.Array


def quantization_loss(v_NxK: jax.Array, rotation_KxK: jax.Array) -> jax.Array:
  """||sign(V R) - V R||_F^2, summed over samples and bits (the loss Q of Gong & Lazebnik)."""
  vr_NxK = jnp.matmul(v_NxK, rotation_KxK, precision=_common.HIGHEST)
  return jnp.sum(jnp.square(_common.sign_codes(vr_NxK) - vr_NxK))


def _procrustes_step(v_NxK: jax.Array, rotation_KxK: jax.Array) -> jax.Array:
  """One ITQ iteration: B = sign(V R), then the orthogonal R minimising ||B - V R||_F."""
  codes_NxK = _common.sign_codes(jnp.matmul(v_NxK, rotation_KxK, precision=_common.HIGHEST))
  u_KxK, _, wt_KxK = jnp.linalg.svd(
      jnp.matmul(codes_NxK.T, v_NxK, precision=_common.HIGHEST))
  return jnp.matmul(wt_KxK.T, u_KxK.T, precision=_common.HIGHEST)


@functools.partial(jax.jit, static_argnames=("num_bits", "num_iters", "return_history"))
def fit(
    train_features: jax.typing.ArrayLike,
    num_bits: int,
    key: jax.Array,
    *,
    num_iters: int = 50,
    return_history: bool = False,
) -> Union[ITQParams, Tuple[ITQParams, jax.Array]]:
  """Fits ITQ with k = `num_bits` <= d on (n, d) training features.

  Args:
    train_features: (n, d) features.
    num_bits: code length k; at most d.
    key: draws the initial random orthogonal rotation.
    num_iters: alternations of the code and rotation updates (50 in the paper).
    return_history: also return the (num_iters + 1,) quantisation loss, of the initial rotation
      and after each iteration (non-increasing up to float rounding).

  Returns:
    The parameters, or (parameters, loss history) when `return_history`.
  """
  x_NxD = _common.as_features(train_features, "train_features")
  _common.check_num_bits(num_bits)
  if num_bits > x_NxD.shape[1]:
    raise ValueError(
        f"ITQ needs num_bits <= feature dimension, got num_bits={num_bits} for features of "
        f"shape {x_NxD.shape}")
  mean_D, pca_DxK, _ = _common.pca(x_NxD, num_bits)
  v_NxK = jnp.matmul(x_NxD - mean_D[None, :], pca_DxK, precision=_common.HIGHEST)
  rotation_KxK, _ = jnp.linalg.qr(jax.random.normal(key, (num_bits, num_bits), x_NxD.dtype))

  def step(rotation, _):
    return _procrustes_step(v_NxK, rotation), quantization_loss(v_NxK, rotation)

  rotation_KxK, losses_T = jax.lax.scan(step, rotation_KxK, None, length=num_iters)
  params = ITQParams(mean=mean_D, pca=pca_DxK, rotation=rotation_KxK)
  if return_history:
    return params, jnp.append(losses_T, quantization_loss(v_NxK, rotation_KxK))
  return params


@jax.jit
def encode(params: ITQParams, features: jax.typing.ArrayLike) -> jax.Array:
  """(n, d) features -> (n, k) +-1 codes sign((x - mean) @ pca @ rotation), sign(0) = +1."""
  x_NxD = _common.as_features(features, "features")
  _common.check_dim(x_NxD, params.mean.shape[0])
  v_NxK = jnp.matmul(x_NxD - params.mean[None, :], params.pca, precision=_common.HIGHEST)
  return _common.sign_codes(jnp.matmul(v_NxK, params.rotation, precision=_common.HIGHEST))
