"""The UCSH objective and one data-parallel optimisation step.

`per_device_train_step` is written for a single device of a 1-D mesh with axis "data": it sees
its slice of the global batch, all-gathers features and codes so that the pairwise losses (L_2
and L_S) cover the *global* batch, and averages the per-example losses (L_V, L_C) over devices.
`make_train_step` compiles it with `jax.jit(jax.shard_map(...))`. The result equals a one-device
step on the same global batch (tests/test_train_step.py checks 1 vs 8 devices).
"""

import functools
from typing import Callable, Dict, NamedTuple, Tuple

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


class LossWeights(NamedTuple):
  """Weights of eq. 7: L = L_2 + alpha L_V + beta L_C + gamma L_S."""
  alpha: float
  beta: float
  gamma: float


def example_keys(key: jax.Array, step: jax.Array, index_B: jax.Array) -> jax.Array:
  """Per-example random keys from (step, example index): independent of the device layout."""
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index_B)


def ucsh_losses(params, batch: Dict[str, jax.Array], threshold: jax.Array, key: jax.Array,
                step: jax.Array, *, model: nn.Module, weights: LossWeights,
                reduction: str) -> Tuple[jax.Array, Metrics]:
  """The total loss (eq. 7) of one device's slice, pairwise terms over the global batch.

  Args:
    params: model parameters (replicated).
    batch: this device's slice: "image" (B, H, W, 3) or "features" (B, d), "index" (B,) int32
      (position in the training set), "center" (B, k) the +-1 hash center of each example.
    threshold: scalar similarity threshold s_t of this epoch.
    key: the run's dropout/sampling key; combined with `step` and the example indices.
  Returns:
    (total loss, dict of the four terms and the total), identical on every device.
  """
  inputs = batch["image"] if "image" in batch else batch["features"]
  keys_B = example_keys(key, step, batch["index"])
  code_noise_BxK = jax.vmap(
      lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (batch["center"].shape[-1],)))(keys_B)
  dropout_key = jax.random.fold_in(jax.random.fold_in(key, step),
                                    lax.axis_index(DATA_AXIS) + (1 << 20))
  out = model.apply({"params": params}, inputs, train=True, code_noise=code_noise_BxK,
                    rngs={"dropout": dropout_key})
  features_BxD = out["features"]
  per_example_mean = lax.psum if reduction == "sum" else lax.pmean

  features_NxD = lax.all_gather(features_BxD, DATA_AXIS, tiled=True)
  codes_NxK = lax.all_gather(out["codes"], DATA_AXIS, tiled=True)
  similarity_NxN = ops.pairwise_similarity(features_NxD)
  l2 = ops.similarity_loss(codes_NxK, similarity_NxN, reduction=reduction)
  separating = ops.separating_loss(similarity_NxN, threshold, reduction=reduction)
  vae = per_example_mean(
      ops.vae_loss(features_BxD, out["reconstruction"], out["logits"], reduction=reduction),
      DATA_AXIS)
  clustering = per_example_mean(
      ops.clustering_loss(out["codes"], batch["center"], reduction=reduction), DATA_AXIS)
  total = l2 + weights.alpha * vae + weights.beta * clustering + weights.gamma * separating
  terms = {"loss": total, "loss_l2": l2, "loss_vae": vae, "loss_clustering": clustering,
           "loss_separating": separating}
  # Every term is now identical on all devices; pmean makes that visible to the type system.
  terms = jax.tree.map(lambda x: lax.pmean(x, DATA_AXIS), terms)
  return terms["loss"], terms


def per_device_train_step(state: TrainState, batch: Dict[str, jax.Array], threshold: jax.Array,
                          key: jax.Array, *, model: nn.Module, weights: LossWeights,
                          reduction: str) -> Tuple[TrainState, Metrics]:
  """One optimiser step; run inside shard_map over "data" (parameters replicated)."""
  loss_fn = functools.partial(ucsh_losses, batch=batch, threshold=threshold, key=key,
                              step=state.step, model=model, weights=weights,
                              reduction=reduction)
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
                    reduction: str = "mean") -> Callable[..., Tuple[TrainState, Metrics]]:
  """`step(state, batch, threshold, key) -> (state, metrics)`, compiled over `mesh`.

  `batch` arrays are split over "data" on their leading axis; the state, threshold and key are
  replicated. The state argument is donated.
  """
  step = functools.partial(per_device_train_step, model=model, weights=weights,
                           reduction=reduction)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                          out_specs=(P(), P()))
  # Outputs carry exactly the sharding `parallel.replicate` gives the inputs, so the next call
  # hits the compilation cache.
  replicated = jax.sharding.NamedSharding(mesh, P())
  return jax.jit(sharded, out_shardings=(replicated, replicated), donate_argnums=0)
