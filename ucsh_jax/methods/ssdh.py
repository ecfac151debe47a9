"""SSDH (Yang et al., IJCAI 2018), the paper's strongest deep baseline.

SSDH's pairwise targets come from the two half-Gaussian thresholds of the cosine distances
(the estimate UCSH borrows for s_t): S_ij = +1 when d_ij < m - 2 sigma_left, -1 when
d_ij > m + 2 sigma_right, 0 (ignored) between; the loss is sum_ij |S_ij| (S_ij - b_i . b_j /
k)^2 with tanh codes (configs/ssdh.py sets `model.code_activation = "tanh"`), i.e. L_2
restricted to the |S| = 1 pairs, and nothing else. The thresholds are re-estimated every epoch
from a sample of `threshold_samples` training features and S is computed per batch from the
step's dropout-free features; with fixed features it is SSDH's fixed S. The head is UCSH's
(its decoder unused), so SSDH and UCSH runs differ in their objectives only.
"""

from typing import Dict, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import ops
from ucsh_jax.methods import base
from ucsh_jax.models import ucsh as ucsh_model
from ucsh_jax.parallel import DATA_AXIS


class SSDHState(NamedTuple):
  """epoch; threshold: the left threshold m - 2 sigma_left as a similarity 2 cos - 1 bound
  (pairs above it are similar); threshold_right: the right one (pairs below it dissimilar)."""
  epoch: np.ndarray
  threshold: np.ndarray
  threshold_right: np.ndarray


def ssdh_loss(codes_NxK: jax.Array, similarity_NxN: jax.Array, threshold: jax.Array,
              threshold_right: jax.Array) -> jax.Array:
  """SSDH's loss in `ops.similarity_loss`'s mean form: sum_ij |S_ij| (S_ij - b_i . b_j / k)^2
  / (N^2 k^2) over the N codes (N, k), S = `ops.ssdh_similarity` of the features' 2 cos - 1
  (N, N) between the thresholds (stop-gradient)."""
  s_NxN = lax.stop_gradient(ops.ssdh_similarity(similarity_NxN, threshold, threshold_right))
  return ops.similarity_loss(codes_NxK, s_NxN, pair_weights=jnp.abs(s_NxN))


class SSDH(base.Method):
  """SSDH's objective on the shared network (UCSH's head, tanh codes in training)."""

  name = "ssdh"
  title = "SSDH"
  source = "Yang et al., IJCAI 2018"
  uses_epoch_features = True

  @classmethod
  def make_head(cls, config, feature_dim, dtype, dropout_rate):
    return ucsh_model.HashHead(bits=config.bits, feature_dim=feature_dim,
                               decoder_hidden=config.model.decoder_hidden,
                               code_activation=config.model.code_activation,
                               dropout_rate=dropout_rate, dtype=dtype)

  def empty_state(self, num_train: int) -> SSDHState:
    del num_train
    zero = np.asarray(0.0, np.float32)
    return SSDHState(epoch=np.asarray(-1, np.int32), threshold=zero, threshold_right=zero)

  def refresh(self, features_NxD, previous, *, epoch, key) -> SSDHState:
    # The second half of the split, as UCSH's epoch state draws its threshold sample.
    _, sample_key = jax.random.split(key)
    num = features_NxD.shape[0]
    sample = np.asarray(jax.random.permutation(sample_key, num))[
        :min(self.config.threshold_samples, num)]
    estimate = ops.similarity_threshold(jnp.asarray(features_NxD[np.sort(sample)]))
    return SSDHState(epoch=np.asarray(epoch, np.int32),
                     threshold=np.asarray(estimate.threshold, np.float32),
                     threshold_right=np.asarray(estimate.threshold_right, np.float32))

  def epoch_scalars(self, state, previous) -> Dict[str, float]:
    del previous
    return {"threshold": float(state.threshold),
            "threshold_right": float(state.threshold_right)}

  def step_inputs(self, state) -> np.ndarray:
    return np.stack([state.threshold, state.threshold_right]).astype(np.float32)

  def losses(self, params, batch, context):
    inputs = batch["image"] if "image" in batch else batch["features"]
    out = context.model.apply({"params": params}, inputs, train=True,
                              code_noise=base.code_noise(context.key, context.step,
                                                         batch["index"], self.config.bits),
                              rngs={"dropout": base.dropout_key(context.key, context.step)})
    features_NxD = lax.all_gather(out["similarity_features"], DATA_AXIS, tiled=True)
    codes_NxK = lax.all_gather(out["codes"], DATA_AXIS, tiled=True)
    loss = ssdh_loss(codes_NxK, ops.pairwise_similarity(features_NxD), context.inputs[0],
                     context.inputs[1])
    loss = base.same_on_all_devices(loss)
    return {base.MAIN_GROUP: loss}, {"loss": loss}
