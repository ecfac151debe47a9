"""DistillHash's primitives (Yang et al., CVPR 2019, arXiv 1905.03465): the local estimate of
the noisy label posterior, the distillation of the confident pairs, and the pairwise
likelihood loss on them."""

import functools

import jax
import jax.numpy as jnp


def _check_square(x: jax.Array, name: str) -> None:
  if x.ndim != 2 or x.shape[0] != x.shape[1]:
    raise ValueError(f"{name} must be a square (n, n) matrix, got shape {x.shape}")


def neighbour_label_counts(labels: jax.Array, neighbours: jax.Array) -> jax.Array:
  """How many of the K x K pairs (p, q), p a neighbour of i and q one of j, are labelled +1 and
  how many -1: the local estimate of the noisy label posterior of (i, j) is count / K^2.

  Args:
    labels: (n, n) noisy labels in {+1, 0, -1} (0: unlabelled).
    neighbours: (n, K) int, the K training-set neighbours of each item (`cosine_neighbours`,
      the item itself first).

  Returns:
    (2, n, n) int32: [0] the number of neighbour pairs labelled +1, [1] labelled -1;
    count[i, j] = sum_{p in N(i)} sum_{q in N(j)} [labels[p, q] = +-1].
  """
  labels = jax.lax.stop_gradient(jnp.asarray(labels))
  _check_square(labels, "labels")
  if neighbours.ndim != 2 or neighbours.shape[0] != labels.shape[0]:
    raise ValueError(f"neighbours must be (n, K) with n = {labels.shape[0]}, got shape "
                     f"{neighbours.shape}")
  return _counts(labels, jnp.asarray(neighbours, jnp.int32))


@jax.jit
def _counts(labels_NxN, neighbours_NxK):
  onehot_2xNxN = jnp.stack([labels_NxN == 1, labels_NxN == -1]).astype(jnp.int32)

  # K gathers of (n, n) rows, then of columns: 2 K n^2 work and n^2 memory (no (n, K, n)).
  def rows(k, acc):
    return acc + onehot_2xNxN[:, neighbours_NxK[:, k], :]

  def cols(k, acc):
    return acc + row_sums[:, :, neighbours_NxK[:, k]]

  num = neighbours_NxK.shape[1]
  row_sums = jax.lax.fori_loop(0, num, rows, jnp.zeros_like(onehot_2xNxN))
  return jax.lax.fori_loop(0, num, cols, jnp.zeros_like(onehot_2xNxN))


def distill_pairs(labels: jax.Array, neighbours: jax.Array, *, rho_similar: float,
                  rho_dissimilar: float) -> jax.Array:
  """The distilled labels: the pairs whose noisy label agrees with the Bayes-optimal one.

  Under class-conditional label noise with flip rates rho_+ = P(noisy -1 | similar) and
  rho_- = P(noisy +1 | dissimilar), rho_+ + rho_- < 1, the noisy posterior is
  P(noisy +1 | x) = (1 - rho_+ - rho_-) P(similar | x) + rho_-, so
    P(noisy +1 | x) > (1 + rho_-) / 2  implies  P(similar | x) > 1/2 (Bayes-optimal label +1),
    P(noisy -1 | x) > (1 + rho_+) / 2  implies  P(dissimilar | x) > 1/2 (label -1).
  A pair labelled +1 (-1) is kept as similar (dissimilar) when its local posterior estimate
  (`neighbour_label_counts` / K^2) passes the first (second) bound; every other pair is 0.

  Args:
    labels: (n, n) noisy labels in {+1, 0, -1}.
    neighbours: (n, K) int neighbour indices (each item's own index among them).
    rho_similar: rho_+ in [0, 1).
    rho_dissimilar: rho_- in [0, 1), rho_+ + rho_- < 1.

  Returns:
    (n, n) int8 in {+1, 0, -1}.
  """
  if not (0.0 <= rho_similar < 1.0 and 0.0 <= rho_dissimilar < 1.0
          and rho_similar + rho_dissimilar < 1.0):
    raise ValueError(f"flip rates must be in [0, 1) with a sum below 1, got rho_similar="
                     f"{rho_similar}, rho_dissimilar={rho_dissimilar}")
  counts_2xNxN = neighbour_label_counts(labels, neighbours)
  return _distill(jnp.asarray(labels), counts_2xNxN, neighbours.shape[1],
                  float(rho_similar), float(rho_dissimilar))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _distill(labels_NxN, counts_2xNxN, num_neighbours, rho_similar, rho_dissimilar):
  # count / K^2 > (1 + rho) / 2  <=>  2 count > (1 + rho) K^2; float32 is exact for the counts.
  pairs = float(num_neighbours * num_neighbours)
  counts = counts_2xNxN.astype(jnp.float32)
  similar = (labels_NxN == 1) & (2.0 * counts[0] > (1.0 + rho_dissimilar) * pairs)
  dissimilar = (labels_NxN == -1) & (2.0 * counts[1] > (1.0 + rho_similar) * pairs)
  return jnp.where(similar, 1, jnp.where(dissimilar, -1, 0)).astype(jnp.int8)


def pairwise_likelihood_loss(codes: jax.Array, labels: jax.Array, *,
                             scale: float) -> jax.Array:
  """The negative log likelihood of the pair labels given the codes, mean over labelled pairs.

  With Omega_ij = scale u_i . u_j and p(s_ij = 1 | u_i, u_j) = sigmoid(Omega_ij):
    -log p = log(1 + e^Omega_ij) - s_ij Omega_ij, s_ij = 1 for a +1 label, 0 for -1,
  summed over the pairs whose label is not 0 and divided by their number (1 if none).

  Args:
    codes: (n, k) relaxed codes u (e.g. tanh).
    labels: (n, n) labels in {+1, 0, -1}; stop-gradient.
    scale: the scale of the inner product (1/2 in DPSH's form).

  Returns:
    Scalar loss.
  """
  if codes.ndim != 2:
    raise ValueError(f"codes must be 2-D (n, k), got shape {codes.shape}")
  n = codes.shape[0]
  if labels.shape != (n, n):
    raise ValueError(f"labels must be (n, n) = {(n, n)} for codes of shape {codes.shape}, "
                     f"got shape {labels.shape}")
  labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
  omega_NxN = scale * (codes @ codes.T)
  nll_NxN = jax.nn.softplus(omega_NxN) - (labels > 0) * omega_NxN
  weight_NxN = jnp.abs(labels)
  return jnp.sum(weight_NxN * nll_NxN) / jnp.maximum(jnp.sum(weight_NxN), 1.0)
