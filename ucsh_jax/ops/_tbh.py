"""TBH's primitives (Shen et al., CVPR 2020, arXiv 2002.11930): the stochastic binary
bottleneck, the code-driven graph and its normalisation, the discriminators' cross-entropy.

Each follows the authors' TensorFlow code (github.com/ymcidence/TBH, commit 778dd1c) to the
gradient: `layer/binary_activation.py`, `layer/twin_bottleneck.py`, `layer/gcn.py`, and the
Keras 2 `binary_crossentropy` their `adv_loss` calls.
"""

import jax
import jax.numpy as jnp

# The authors' `gcn.OVERFLOW_MARGIN`, added to the degrees before the inverse square root.
DEGREE_MARGIN = 1e-8
# Keras' backend epsilon: the probabilities' clip and the margin inside the logarithms.
PROBABILITY_EPSILON = 1e-7


def stochastic_binary(logits: jax.Array, threshold: jax.Array) -> jax.Array:
  """TBH's binary bottleneck b = (sign(sigmoid(h) - eps) + 1) / 2 in {0, 1} (1/2 where equal).

  Args:
    logits: (n, k) the encoder's code layer h.
    threshold: eps, broadcastable to `logits`: uniform [0, 1) noise per bit for the paper's
      stochastic neuron (b ~ Bernoulli(sigmoid(h))), or 0.5 for the deterministic one of the
      authors' released code.

  Returns:
    (n, k) float codes in {0, 1}. The gradient is the authors' distributional derivative:
    d h = sigmoid(h) (1 - sigmoid(h)) d b (the straight-through estimator through the
    Bernoulli mean); eps, noise, gets none (their `binary_activation` returns d b for it, which
    nothing reads).
  """
  return _binary(logits, jnp.broadcast_to(threshold, logits.shape).astype(logits.dtype))


@jax.custom_vjp
def _binary(logits, threshold):
  return (jnp.sign(jax.nn.sigmoid(logits) - threshold) + 1.0) / 2.0


def _binary_fwd(logits, threshold):
  prob = jax.nn.sigmoid(logits)
  return (jnp.sign(prob - threshold) + 1.0) / 2.0, (prob, threshold)


def _binary_bwd(residual, g):
  prob, threshold = residual
  return prob * (1.0 - prob) * g, jnp.zeros_like(threshold)


_binary.defvjp(_binary_fwd, _binary_bwd)


def hamming_adjacency(codes_NxK: jax.Array, power: float = 1.4) -> jax.Array:
  """The code-driven graph A_ij = (1 - d_H(b_i, b_j) / k) ** power, self-connected (A_ii = 1).

  As the authors' `build_adjacency_hamming`: with {0, 1} codes, b_i . (b_j - 1) + (b_i - 1) .
  b_j = -d_H(b_i, b_j) (the paper's 1 - d_H / k is A at power 1; the code raises it to 1.4).
  |.| is written sign(c) c so that its derivative at c = 0 (identical codes, the diagonal) is
  0, TensorFlow's, where jnp.abs's would be 1.

  Args:
    codes_NxK: (N, k) codes in {0, 1} (the binary bottleneck, gradients flowing through it).
    power: the exponent (1.4 in the authors' code).

  Returns:
    (N, N) adjacency in [0, 1].
  """
  k = codes_NxK.shape[1]
  minus_one = codes_NxK - 1.0
  hi = jax.lax.Precision.HIGHEST
  c_NxN = (jnp.matmul(codes_NxK, minus_one.T, precision=hi)
           + jnp.matmul(minus_one, codes_NxK.T, precision=hi))
  distance_NxN = jnp.sign(c_NxN) * c_NxN / k
  return jnp.power(1.0 - distance_NxN, power)


def normalized_adjacency(adjacency_NxN: jax.Array) -> jax.Array:
  """D^-1/2 A D^-1/2 with the degrees D = A 1 (+ `DEGREE_MARGIN`), the graph convolution's
  propagation matrix (the authors' `GCNLayer.graph_laplacian`; A must be self-connected)."""
  degree_N = adjacency_NxN.sum(axis=1)
  inv_sqrt_N = jnp.power(degree_N + DEGREE_MARGIN, -0.5)
  return inv_sqrt_N[:, None] * adjacency_NxN * inv_sqrt_N[None, :]


def binary_cross_entropy(target: jax.Array, prob: jax.Array) -> jax.Array:
  """Elementwise -(t log(p + e) + (1 - t) log(1 - p + e)), p clipped to [e, 1 - e] first,
  e = `PROBABILITY_EPSILON`: Keras 2's `binary_crossentropy` on probabilities (the
  discriminators' sigmoid outputs), which the authors' `adv_loss` averages."""
  p = jnp.clip(prob, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
  return -(target * jnp.log(p + PROBABILITY_EPSILON)
           + (1.0 - target) * jnp.log(1.0 - p + PROBABILITY_EPSILON))
