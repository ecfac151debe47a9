"""Pieces shared by the shallow baselines: input checks, PCA and +-1 codes."""

from typing import Tuple

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def as_features(features: jax.typing.ArrayLike, name: str) -> jax.Array:
  """Checks that `features` is a 2-D (n, d) array and returns it as floats."""
  x = jnp.asarray(features)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {x.shape}")
  if x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f"{name} must have at least one row and one column, got shape {x.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def check_num_bits(num_bits: int) -> None:
  if int(num_bits) != num_bits or num_bits < 1:
    raise ValueError(f"num_bits must be a positive integer, got {num_bits!r}")


def check_dim(features_NxD: jax.Array, expected_dim: int) -> None:
  """Checks that features to encode have the dimension the parameters were fit on."""
  if features_NxD.shape[1] != expected_dim:
    raise ValueError(
        f"features have dimension {features_NxD.shape[1]} (shape {features_NxD.shape}) but the "
        f"parameters were fit on {expected_dim}-dimensional features")


def pca(x_NxD: jax.Array, num_components: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Principal components of the rows of `x_NxD`.

  Returns:
    mean_D: the mean row.
    components_DxP: orthonormal columns, the eigenvectors of the covariance
      (1/n) sum_i (x_i - mean)(x_i - mean)^T with the P = `num_components` largest eigenvalues,
      in decreasing order of eigenvalue (the sign of each column is arbitrary).
    variances_P: those eigenvalues.
  """
  mean_D = x_NxD.mean(axis=0)
  centred_NxD = x_NxD - mean_D[None, :]
  cov_DxD = jnp.matmul(centred_NxD.T, centred_NxD, precision=HIGHEST) / x_NxD.shape[0]
  eigvals_D, eigvecs_DxD = jnp.linalg.eigh(cov_DxD)  # Ascending eigenvalues.
  return (mean_D, eigvecs_DxD[:, ::-1][:, :num_components],
          eigvals_D[::-1][:num_components])


def sign_codes(values: jax.Array) -> jax.Array:
  """+-1 codes of the same shape and float dtype: +1 where value >= 0 (so sign(0) = +1)."""
  return jnp.where(values >= 0, 1.0, -1.0).astype(values.dtype)
