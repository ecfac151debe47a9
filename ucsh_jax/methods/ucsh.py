"""UCSH (the paper): L_2 + alpha L_V + beta L_C + gamma L_S, re-clustering every epoch.

Per epoch the training features are clustered with k-means (cluster j keeps Hadamard hash
center j), s_t (and SSDH's right threshold) re-estimated, and for the neighbour-rank targets
each image's cosine neighbours recomputed (`epoch_state`). Its config fields predate the
methods layer and keep their places: `ablation`, `loss.*`, `similarity.*`, `num_clusters`,
`kmeans_*` (configs/cifar.py).
"""

from typing import Dict, NamedTuple, Tuple

import jax
from jax import lax
import ml_collections
import numpy as np

from ucsh_jax import epoch_state as epoch_state_lib
from ucsh_jax import errors
from ucsh_jax import ops
from ucsh_jax.methods import base
from ucsh_jax.models import ucsh as ucsh_model
from ucsh_jax.parallel import DATA_AXIS

ABLATIONS = ("", "V", "C", "S", "R")
ABLATION_LABELS = {"": "UCSH", "V": "UCSH-V", "C": "UCSH-C", "S": "UCSH-S", "R": "UCSH-R"}
BALANCES = ("paper", "mean")
# The targets S of L_2: "cosine" S = 2 cos - 1 of the step's features (the paper's eq. 2);
# "neighbours" S = +1 for cosine neighbours in the training set (batch["neighbours"]), else -1.
TARGETS = ("cosine", "neighbours")


class LossWeights(NamedTuple):
  """Weights of the mean-form terms: total = M_2 + reconstruction M_rec + kl M_kl +
  clustering M_C + separating M_S (see `ucsh_losses`; `loss_weights` derives them from eq. 7's
  alpha, beta, gamma)."""
  reconstruction: float
  kl: float
  clustering: float
  separating: float


def ablated_weights(config: ml_collections.ConfigDict) -> Tuple[float, float, float]:
  """alpha, beta, gamma of eq. 7 after the ablation (UCSH-V: alpha=0, -C: beta=0, -S: gamma=0)."""
  return (0.0 if config.ablation == "V" else config.loss.alpha,
          0.0 if config.ablation == "C" else config.loss.beta,
          0.0 if config.ablation == "S" else config.loss.gamma)


def loss_weights(config: ml_collections.ConfigDict, feature_dim: int) -> LossWeights:
  """The weights of the step's mean-form terms (see `ucsh_losses`).

  The step minimises M_2 + w_rec M_rec + w_kl M_kl + w_C M_C + w_S M_S, each M the mean form
  of a term of eq. 7 over a global batch of n (M_2 = L_2 / (n^2 k^2), M_rec = L_rec / (n d),
  M_kl = L_kl / (n k), M_C = L_C / (n k), M_S = L_S / n^2, with the literal sums L of the
  paper, L_V = L_rec + L_kl, d the feature dimension, k the bits).

  `config.loss.balance = "paper"` derives the weights from alpha, beta, gamma at the batch
  n_0 = `config.loss.reference_batch` (the paper's 24):
    w_rec = alpha d / (n_0 k^2), w_kl = alpha / (n_0 k), w_C = beta / (n_0 k), w_S = gamma / k^2,
  so that at n = n_0 the objective is exactly (L_2 + alpha L_V + beta L_C + gamma L_S) /
  (n_0^2 k^2): the paper's eq. 7 up to one positive factor, at every code length, and the same
  on any number of devices (every term is a mean over the global batch). At another batch size
  the terms keep the relative weights they have at n_0.
  `"mean"` puts alpha, beta, gamma on the mean forms directly (w_rec = w_kl = alpha).
  """
  alpha, beta, gamma = ablated_weights(config)
  if config.loss.balance == "mean":
    return LossWeights(reconstruction=alpha, kl=alpha, clustering=beta, separating=gamma)
  n0, k = config.loss.reference_batch, config.bits
  return LossWeights(reconstruction=alpha * feature_dim / (n0 * k * k), kl=alpha / (n0 * k),
                     clustering=beta / (n0 * k), separating=gamma / (k * k))


def num_neighbours(config: ml_collections.ConfigDict, num_train: int) -> int:
  """m of the neighbour-rank targets; 0 when the targets are not "neighbours".

  config.similarity.num_neighbours, or when that is 0 a tenth of the training set at up to 16
  bits and a twentieth at more bits (longer codes can keep a tighter neighbourhood: measured
  on the dev features, 64 bits, m = 50 gave MAP 0.308 and m = 100 0.301; at 16 bits m = 100
  0.280 and m = 50 0.254; the digits demo agrees).
  """
  if config.similarity.target != "neighbours":
    return 0
  derived = max(1, num_train // (10 if config.bits <= 16 else 20))
  return min(num_train, config.similarity.num_neighbours or derived)


def ucsh_losses(params, batch: Dict[str, jax.Array], threshold: jax.Array, key: jax.Array,
                step: jax.Array, *, model, weights: LossWeights,
                target: str = "cosine") -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The total loss of one device's slice (eq. 7 in mean form), pairwise terms over the global
  batch.

  With N the global batch, k bits and d the feature dimension, the terms are the means
    M_2 = L_2 / (N^2 k^2), M_rec = L_rec / (N d), M_kl = L_kl / (N k), M_C = L_C / (N k),
    M_S = L_S / N^2
  of the paper's literal sums (L_V = L_rec + L_kl), each over the *global* batch, so the
  total M_2 + w_rec M_rec + w_kl M_kl + w_C M_C + w_S M_S does not depend on the number of
  devices. L_2's targets S are stop-gradient; L_S uses 2 cos - 1 of the step's features with
  its gradient. Both come from the model's "similarity_features": the features without
  dropout (fc7 recomputed from fc6, or the top without its input dropout), the kind s_t and
  the clusters are computed from; L_V reconstructs the train-mode "features".

  Args:
    params: model parameters (replicated).
    batch: this device's slice: "image" (B, H, W, 3) or "features" (B, d), "index" (B,) int32
      (position in the training set), "center" (B, k) the +-1 hash center of each example,
      and for target "neighbours" "neighbours" (B, m) int32 (training-set indices).
    threshold: s_t of this epoch (scalar).
    key: the run's dropout/sampling key; combined with `step` and the example indices.
  Returns:
    (total loss, dict of the total and the unweighted mean-form terms: "loss_l2",
    "loss_reconstruction", "loss_kl", "loss_vae" (their sum), "loss_clustering",
    "loss_separating"),
    identical on every device.
  """
  inputs = batch["image"] if "image" in batch else batch["features"]
  code_noise_BxK = base.code_noise(key, step, batch["index"], batch["center"].shape[-1])
  out = model.apply({"params": params}, inputs, train=True, code_noise=code_noise_BxK,
                    rngs={"dropout": base.dropout_key(key, step)})
  # Similarities from the dropout-free features, like the eval-mode ones s_t and the clusters
  # are computed from (the README's "Decisions the paper leaves open" has the measurement).
  features_NxD = lax.all_gather(out["similarity_features"], DATA_AXIS, tiled=True)
  codes_NxK = lax.all_gather(out["codes"], DATA_AXIS, tiled=True)
  similarity_NxN = ops.pairwise_similarity(features_NxD)
  if target == "neighbours":
    neighbours_NxM = lax.all_gather(batch["neighbours"], DATA_AXIS, tiled=True)
    index_N = lax.all_gather(batch["index"], DATA_AXIS, tiled=True)
    target_NxN = ops.neighbour_similarity(neighbours_NxM, index_N)
  else:
    target_NxN = similarity_NxN
  l2 = ops.similarity_loss(codes_NxK, target_NxN)
  separating = ops.separating_loss(similarity_NxN, threshold)
  # Equal slices on every device: the mean of the per-device means is the global mean.
  reconstruction = base.global_batch_mean(
      ops.reconstruction_loss(out["features"], out["reconstruction"]))
  kl = base.global_batch_mean(ops.kl_loss(out["logits"]))
  clustering = base.global_batch_mean(ops.clustering_loss(out["codes"], batch["center"]))
  total = (l2 + weights.reconstruction * reconstruction + weights.kl * kl
           + weights.clustering * clustering + weights.separating * separating)
  terms = {"loss": total, "loss_l2": l2, "loss_vae": reconstruction + kl,
           "loss_reconstruction": reconstruction, "loss_kl": kl,
           "loss_clustering": clustering, "loss_separating": separating}
  # Every term is now identical on all devices; pmean makes that visible to the type system.
  terms = base.same_on_all_devices(terms)
  return terms["loss"], terms


class UCSH(base.Method):
  """The paper's method (Table 1's last row; Table 2's ablations by `config.ablation`)."""

  name = "ucsh"
  title = "UCSH"
  source = "the paper"
  uses_epoch_features = True

  def __init__(self, config: ml_collections.ConfigDict, feature_dim: int, key: jax.Array):
    super().__init__(config, feature_dim, key)
    self.weights = loss_weights(config, feature_dim)
    self.centers_NxK = np.asarray(ops.hash_centers(config.num_clusters, config.bits, key=key),
                                  np.float32)

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    choices = [("ablation", config.ablation, ABLATIONS),
               ("loss.balance", config.loss.balance, BALANCES),
               ("similarity.target", config.similarity.target, TARGETS),
               ("kmeans_metric", config.kmeans_metric, ops.KMEANS_METRICS)]
    for name, value, allowed in choices:
      if value not in allowed:
        raise errors.UserError(f"config.{name}={value!r}; expected one of {allowed}")
    for name in ("num_clusters", "kmeans_iters", "kmeans_inits"):
      if config[name] < 1:
        raise errors.UserError(f"config.{name}={config[name]} must be at least 1")
    if config.loss.reference_batch < 1:
      raise errors.UserError(f"config.loss.reference_batch={config.loss.reference_batch} must "
                             "be at least 1")
    if config.similarity.num_neighbours < 0:
      raise errors.UserError(f"config.similarity.num_neighbours="
                             f"{config.similarity.num_neighbours} must be >= 0 (0: a tenth of "
                             "the training set)")

  def min_train_items(self) -> int:
    return self.config.num_clusters

  @classmethod
  def make_head(cls, config, feature_dim, dtype, dropout_rate):
    activation = "tanh" if config.ablation == "R" else config.model.code_activation
    return ucsh_model.HashHead(bits=config.bits, feature_dim=feature_dim,
                               decoder_hidden=config.model.decoder_hidden,
                               code_activation=activation, dropout_rate=dropout_rate,
                               dtype=dtype)

  def empty_state(self, num_train: int) -> epoch_state_lib.EpochState:
    return epoch_state_lib.empty_epoch_state(self.config.num_clusters, self.feature_dim,
                                             num_train, num_neighbours(self.config, num_train))

  def refresh(self, features_NxD, previous, *, epoch, key):
    config = self.config
    return epoch_state_lib.refresh_epoch_state(
        features_NxD, previous, epoch=epoch, num_clusters=config.num_clusters,
        kmeans_iters=config.kmeans_iters, kmeans_inits=config.kmeans_inits,
        kmeans_metric=config.kmeans_metric, threshold_samples=config.threshold_samples,
        num_neighbours=previous.neighbours.shape[1], key=key)

  def epoch_scalars(self, state, previous) -> Dict[str, float]:
    scalars = epoch_state_lib.cluster_scalars(state, self.config.num_clusters)
    if int(previous.epoch) >= 0:
      scalars.update(epoch_state_lib.changes(previous, state))
    return scalars

  def batch_extras(self, state, index_B) -> Dict[str, np.ndarray]:
    extras = {"center": self.centers_NxK[state.assignments[index_B]]}
    if self.config.similarity.target == "neighbours":
      extras["neighbours"] = state.neighbours[index_B]
    return extras

  def step_inputs(self, state) -> np.ndarray:
    return np.asarray(state.threshold, np.float32)

  def losses(self, params, batch, context):
    loss, metrics = ucsh_losses(params, batch, context.inputs, context.key, context.step,
                                model=context.model, weights=self.weights,
                                target=self.config.similarity.target)
    return {base.MAIN_GROUP: loss}, metrics

  def results_fields(self) -> Dict[str, str]:
    return {"ablation": self.config.ablation}

