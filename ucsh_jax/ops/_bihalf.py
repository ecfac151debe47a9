"""The bi-half layer of Li and van Gemert (AAAI 2021, arXiv 2012.12334).

Per bit (column) of a batch of continuous codes U (N, K), the half of the N rows with the
largest values get +1 and the other half -1: the codes that maximise each bit's entropy over
the batch (half +1, half -1), and the optimal-transport assignment of U to such a code
matrix. The authors' code (ImageHashing/Cifar10_I.py) sorts each column in descending order
and gives the first floor(N / 2) rows +1 and the remaining ceil(N / 2) -1; so does this, with
ties broken in favour of the lower row (a stable sort; the authors' CUDA sort leaves them
unspecified).

The gradient here is straight-through (identity). The authors' backward adds
gamma (U - B) / (N K) to it; that term is the gradient of gamma / (2 N K) ||U - stop(B)||^2
(`bi_half_penalty`), which a method adds to its loss, so that with the batch split over
devices the term is counted once for the global batch rather than once per device.
"""

import jax
import jax.numpy as jnp


def _check(u):
  if u.ndim != 2:
    raise ValueError(f"u must be 2-D (n, k), got shape {u.shape}")
  if u.shape[0] < 2:
    raise ValueError(f"u needs at least 2 rows to split in halves, got shape {u.shape}")


def bi_half_assignment(u_NxK: jax.Array) -> jax.Array:
  """B (N, K) +-1: per column, +1 on the floor(N/2) largest entries (ties: lower row
  first), -1 elsewhere; same dtype as `u_NxK`, no gradient."""
  u_NxK = jnp.asarray(u_NxK)
  _check(u_NxK)
  n = u_NxK.shape[0]
  # Row ranks in descending order (0 = largest); the stable sort keeps tied rows in order.
  order_NxK = jnp.argsort(-jax.lax.stop_gradient(u_NxK), axis=0, stable=True)
  rank_NxK = jnp.argsort(order_NxK, axis=0, stable=True)
  return jnp.where(rank_NxK < n // 2, 1, -1).astype(u_NxK.dtype)


def bi_half(u_NxK: jax.Array) -> jax.Array:
  """`bi_half_assignment(u)` in the forward pass, an identity (straight-through) gradient.

  Written as stop(B) + (u - stop(u)): the value is B exactly (u - u = 0) and the gradient the
  identity, and, unlike a custom VJP, it keeps the device-varying type of an all-gathered u
  inside shard_map.

  Args:
    u_NxK: (N, K) float continuous codes of the WHOLE batch (all-gather a data-parallel
      batch first: the halves are over the global batch).

  Returns:
    (N, K) +-1 codes of the dtype of `u_NxK`.
  """
  u_NxK = jnp.asarray(u_NxK)
  b_NxK = bi_half_assignment(u_NxK)
  return b_NxK + (u_NxK - jax.lax.stop_gradient(u_NxK))


def bi_half_penalty(u_NxK: jax.Array, b_NxK: jax.Array, gamma: float) -> jax.Array:
  """gamma / (2 N K) sum (U - stop(B))^2: its gradient gamma (U - B) / (N K) is the term the
  authors' bi-half backward adds to the straight-through gradient. Scalar float32."""
  u_NxK = jnp.asarray(u_NxK, jnp.float32)
  _check(u_NxK)
  diff = u_NxK - jax.lax.stop_gradient(jnp.asarray(b_NxK, jnp.float32))
  return 0.5 * gamma * jnp.sum(jnp.square(diff)) / diff.size
