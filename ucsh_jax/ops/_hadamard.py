"""Sylvester Hadamard matrices and the hash-center codebook (DESIGN.md section 3)."""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Candidate codes drawn per requested center before the random rule gives up.
_TRIES_PER_CENTER = 200


def _is_power_of_two(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def hadamard(n: int) -> jax.Array:
  """Sylvester Hadamard matrix H_n: H_1 = [1], H_2m = [[H_m, H_m], [H_m, -H_m]].

  Args:
    n: matrix size, a power of two (a Python int).

  Returns:
    (n, n) float32 matrix of +-1 entries with H H^T = n I; row 0 is all +1.

  Raises:
    ValueError: if n is not a power of two.
  """
  if not isinstance(n, (int, np.integer)) or not _is_power_of_two(int(n)):
    raise ValueError(f"hadamard: n must be a power of two, got {n!r}")
  h = np.ones((1, 1), np.float32)
  while h.shape[0] < n:
    h = np.block([[h, h], [h, -h]])
  return jnp.asarray(h)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _random_balanced_codes(key, num_centers, num_bits, min_distance):
  """Greedy rejection sampling of balanced codes; returns (codes, number found)."""
  max_tries = _TRIES_PER_CENTER * num_centers
  half = num_bits // 2

  def draw(i):
    perm = jax.random.permutation(jax.random.fold_in(key, i), num_bits)
    return jnp.where(perm < half, 1.0, -1.0).astype(jnp.float32)

  def cond(state):
    i, count, _ = state
    return (i < max_tries) & (count < num_centers)

  def body(state):
    i, count, codes = state
    code = draw(i)
    dist = (num_bits - codes @ code) / 2
    filled = jnp.arange(num_centers) < count
    ok = jnp.all(jnp.where(filled, dist >= min_distance, True))
    row = jnp.where(ok, code, codes[jnp.minimum(count, num_centers - 1)])
    codes = codes.at[jnp.minimum(count, num_centers - 1)].set(row)
    return i + 1, count + ok.astype(jnp.int32), codes

  codes = jnp.full((num_centers, num_bits), jnp.nan, jnp.float32)
  _, count, codes = jax.lax.while_loop(cond, body, (0, jnp.int32(0), codes))
  return codes, count


def hash_centers(num_centers: int,
                 num_bits: int,
                 key: Optional[jax.Array] = None) -> jax.Array:
  """Hash centers c_1..c_N, one +-1 code per k-means cluster (DESIGN.md section 3).

  Rules, for N = num_centers and k = num_bits:
    * k a power of two and N <= k: the first N rows of H_k.
    * k a power of two and k < N <= 2k: the first N rows of [H_k; -H_k].
    * otherwise: random balanced codes (k // 2 entries +1), drawn with `key` one at a
      time and kept when their Hamming distance to every kept code is at least
      ceil(k / 4), trying at most 200 N candidates.

  Args:
    num_centers: N, the number of centers (Python int >= 1).
    num_bits: k, the code length (Python int >= 2).
    key: PRNG key; required only by the random rule.

  Returns:
    (num_centers, num_bits) float32 array of +-1 centers, pairwise distinct.

  Raises:
    ValueError: bad sizes, a missing key for the random rule, or no set of centers with
      the minimum distance found. Under jit with a traced key the last check cannot run:
      rows that could not be filled are NaN.
  """
  if num_centers < 1:
    raise ValueError(f"hash_centers: num_centers must be >= 1, got {num_centers}")
  if num_bits < 2:
    raise ValueError(f"hash_centers: num_bits must be >= 2, got {num_bits}")
  if _is_power_of_two(num_bits) and num_centers <= 2 * num_bits:
    h = hadamard(num_bits)
    return jnp.concatenate([h, -h], axis=0)[:num_centers]
  if key is None:
    raise ValueError(
        f"hash_centers: {num_centers} centers of {num_bits} bits need the random rule "
        "(N > 2k or k not a power of two), which needs a PRNG `key`")
  min_distance = math.ceil(num_bits / 4)
  codes, count = _random_balanced_codes(key, num_centers, num_bits, min_distance)
  if not isinstance(count, jax.core.Tracer) and int(count) < num_centers:
    raise ValueError(
        f"hash_centers: found only {int(count)} of {num_centers} balanced {num_bits}-bit "
        f"codes with pairwise Hamming distance >= {min_distance} after "
        f"{_TRIES_PER_CENTER * num_centers} draws; use more bits or fewer centers")
  return codes
