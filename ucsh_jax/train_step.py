"""The UCSH objective and one data-parallel optimisation step.

`per_device_train_step` is written for a single device of a 1-D mesh with axis "data": it sees
its slice of the global batch, all-gathers features and codes so that the pairwise losses (L_2
and L_S) cover the *global* batch, and averages the per-example losses (L_V, L_C) over devices.
`make_train_step` compiles it with `jax.jit(jax.shard_map(...))`. The result equals a one-device
step on the same global batch (tests/test_train_step.py checks 1 vs 8 devices).
"""

import functools
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import optax

from ucsh_jax import ops
from ucsh_jax.parallel import DATA_AXIS

P = jax.sharding.PartitionSpec
TrainState = train_state.TrainState
Metrics = Dict[str, jax.Array]


# The targets S of L_2: "cosine" S = 2 cos - 1 of the step's features (the paper's eq. 2);
# "neighbours" S = +1 for cosine neighbours in the training set (batch["neighbours"]), else -1;
# "ssdh" S in {+1, 0, -1} from SSDH's two thresholds, the 0 pairs ignored.
TARGETS = ("cosine", "neighbours", "ssdh")


class LossWeights(NamedTuple):
  """Weights of the mean-form terms: total = M_2 + reconstruction M_rec + kl M_kl +
  clustering M_C + separating M_S (see `ucsh_losses`; `experiment.loss_weights` derives them
  from eq. 7's alpha, beta, gamma)."""
  reconstruction: float
  kl: float
  clustering: float
  separating: float


def example_keys(key: jax.Array, step: jax.Array, index_B: jax.Array) -> jax.Array:
  """Per-example random keys from (step, example index): independent of the device layout."""
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index_B)


def code_noise(key: jax.Array, step: jax.Array, index_B: jax.Array, bits: int) -> jax.Array:
  """(B, bits) uniform [0, 1) noise of the decoder's Bernoulli sample (HashHead's
  `code_noise`), drawn per example from `example_keys`."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (bits,)))(
      example_keys(key, step, index_B))


def similarity_targets(target: str, similarity_NxN: jax.Array, threshold: jax.Array,
                       batch: Dict[str, jax.Array]) -> Tuple[jax.Array, Optional[jax.Array]]:
  """(S (N, N), pair weights (N, N) or None) of L_2 for the global batch of N.

  Args:
    target: one of TARGETS.
    similarity_NxN: 2 cos - 1 of the global batch's features.
    threshold: s_t, or for "ssdh" the pair (s_t, SSDH's right threshold).
    batch: this device's slice; "neighbours" (B, m) and "index" (B,) for "neighbours".
  """
  if target == "cosine":
    return similarity_NxN, None
  if target == "neighbours":
    neighbours_NxM = lax.all_gather(batch["neighbours"], DATA_AXIS, tiled=True)
    index_N = lax.all_gather(batch["index"], DATA_AXIS, tiled=True)
    return ops.neighbour_similarity(neighbours_NxM, index_N), None
  s_NxN = ops.ssdh_similarity(similarity_NxN, threshold[0], threshold[1])
  return s_NxN, jnp.abs(s_NxN)


def ucsh_losses(params, batch: Dict[str, jax.Array], threshold: jax.Array, key: jax.Array,
                step: jax.Array, *, model: nn.Module, weights: LossWeights,
                target: str = "cosine") -> Tuple[jax.Array, Metrics]:
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
    threshold: s_t of this epoch (scalar); for target "ssdh" the (2,) pair (s_t, right).
    key: the run's dropout/sampling key; combined with `step` and the example indices.
  Returns:
    (total loss, dict of the total and the unweighted mean-form terms: "loss_l2",
    "loss_reconstruction", "loss_kl", "loss_vae" (their sum), "loss_clustering",
    "loss_separating"),
    identical on every device.
  """
  inputs = batch["image"] if "image" in batch else batch["features"]
  code_noise_BxK = code_noise(key, step, batch["index"], batch["center"].shape[-1])
  dropout_key = jax.random.fold_in(jax.random.fold_in(key, step),
                                    lax.axis_index(DATA_AXIS) + (1 << 20))
  out = model.apply({"params": params}, inputs, train=True, code_noise=code_noise_BxK,
                    rngs={"dropout": dropout_key})
  features_BxD = out["features"]
  # Similarities from the dropout-free features, like the eval-mode ones s_t and the clusters
  # are computed from (the README's "Decisions the paper leaves open" has the measurement).
  features_NxD = lax.all_gather(out["similarity_features"], DATA_AXIS, tiled=True)
  codes_NxK = lax.all_gather(out["codes"], DATA_AXIS, tiled=True)
  similarity_NxN = ops.pairwise_similarity(features_NxD)
  target_NxN, pair_weights_NxN = similarity_targets(target, similarity_NxN, threshold, batch)
  s_t = threshold[0] if target == "ssdh" else threshold
  l2 = ops.similarity_loss(codes_NxK, target_NxN, pair_weights=pair_weights_NxN)
  separating = ops.separating_loss(similarity_NxN, s_t)
  # Equal slices on every device: the mean of the per-device means is the global mean.
  reconstruction = lax.pmean(ops.reconstruction_loss(features_BxD, out["reconstruction"]),
                             DATA_AXIS)
  kl = lax.pmean(ops.kl_loss(out["logits"]), DATA_AXIS)
  clustering = lax.pmean(ops.clustering_loss(out["codes"], batch["center"]), DATA_AXIS)
  total = (l2 + weights.reconstruction * reconstruction + weights.kl * kl
           + weights.clustering * clustering + weights.separating * separating)
  terms = {"loss": total, "loss_l2": l2, "loss_vae": reconstruction + kl,
           "loss_reconstruction": reconstruction, "loss_kl": kl,
           "loss_clustering": clustering, "loss_separating": separating}
  # Every term is now identical on all devices; pmean makes that visible to the type system.
  terms = jax.tree.map(lambda x: lax.pmean(x, DATA_AXIS), terms)
  return terms["loss"], terms


def per_device_train_step(state: TrainState, batch: Dict[str, jax.Array], threshold: jax.Array,
                          key: jax.Array, *, model: nn.Module, weights: LossWeights,
                          target: str) -> Tuple[TrainState, Metrics]:
  """One optimiser step; run inside shard_map over "data" (parameters replicated)."""
  loss_fn = functools.partial(ucsh_losses, batch=batch, threshold=threshold, key=key,
                              step=state.step, model=model, weights=weights, target=target)
  # The parameters are replicated, so the gradient of the (device-invariant) loss is already
  # the gradient of the global objective: JAX sums the per-device contributions.
  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  updates = jax.tree.map(jnp.subtract, new_state.params, state.params)
  metrics["l2_grads"] = optax.tree.norm(grads)
  metrics["l2_params"] = optax.tree.norm(new_state.params)
  metrics["l2_updates"] = optax.tree.norm(updates)
  return new_state, metrics


def make_train_step(mesh: jax.sharding.Mesh, *, model: nn.Module, weights: LossWeights,
                    target: str = "cosine") -> Callable[..., Tuple[TrainState, Metrics]]:
  """`step(state, batch, threshold, key) -> (state, metrics)`, compiled over `mesh`.

  `batch` arrays are split over "data" on their leading axis; the state, threshold (s_t, or
  for target "ssdh" the pair of SSDH thresholds) and key are replicated. The state argument is
  donated.
  """
  if target not in TARGETS:
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
  step = functools.partial(per_device_train_step, model=model, weights=weights, target=target)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                          out_specs=(P(), P()))
  # Outputs carry exactly the sharding `parallel.replicate` gives the inputs, so the next call
  # hits the compilation cache.
  replicated = jax.sharding.NamedSharding(mesh, P())
  return jax.jit(sharded, out_shardings=(replicated, replicated), donate_argnums=0)
