"""Binarisation with a straight-through gradient."""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
  """Sign with sign(0) = +1 and an identity (straight-through) gradient.

  Args:
    x: array of any shape and float dtype (e.g. hash-layer logits h, (n, k)).

  Returns:
    Array of the same shape and dtype holding +1 where x >= 0 and -1 elsewhere.
    The vector-Jacobian product passes the cotangent through unchanged.
  """
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def _sign_ste_fwd(x):
  return sign_ste(x), None


def _sign_ste_bwd(_, g):
  return (g,)


sign_ste.defvjp(_sign_ste_fwd, _sign_ste_bwd)
