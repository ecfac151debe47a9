"""One data-parallel optimisation step of any method (`ucsh_jax.methods`).

`per_device_train_step` is written for a single device of a 1-D mesh with axis "data": it sees
its slice of the global batch and asks the method for its losses, which all-gather what their
pairwise terms need and are identical on every device. `make_train_step` compiles it with
`jax.jit(jax.shard_map(...))`. The result equals a one-device step on the same global batch
(tests/test_train_step.py checks 1 vs 8 devices).

A method with several parameter groups (`Method.loss_groups`) gets, in the same step, each
group's parameters updated from the gradient of that group's own loss only.
"""

import functools
from typing import Callable, Dict, Tuple

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from ucsh_jax import methods as methods_lib
from ucsh_jax.parallel import DATA_AXIS

P = jax.sharding.PartitionSpec
TrainState = train_state.TrainState
Metrics = Dict[str, jax.Array]


def group_mask(params, method: methods_lib.Method, group: str):
  """True for the leaves of `params` in the method's parameter group `group`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: method.param_group(key_path(path)) == group, params)


def key_path(path) -> Tuple[str, ...]:
  """The dict keys of a `jax.tree_util` key path, as strings."""
  return tuple(str(getattr(k, "key", k)) for k in path)


def gradients(params, batch: Dict[str, jax.Array], context: methods_lib.Context, *,
              method: methods_lib.Method):
  """(gradient, metrics): each group's parameters differentiated through its own loss."""
  groups = method.loss_groups()

  def group_loss(p, group):
    losses, metrics = method.losses(p, batch, context)
    return losses[group], metrics

  # The parameters are replicated, so the gradient of the (device-invariant) loss is already
  # the gradient of the global objective: JAX sums the per-device contributions.
  grads, metrics = jax.grad(group_loss, has_aux=True)(params, groups[0])
  for group in groups[1:]:
    group_grads = jax.grad(lambda p, g=group: group_loss(p, g)[0])(params)
    grads = jax.tree.map(lambda own, g, other: g if own else other,
                         group_mask(params, method, group), group_grads, grads)
  return grads, metrics


def per_device_train_step(state: TrainState, batch: Dict[str, jax.Array], inputs, key: jax.Array,
                          *, model: nn.Module, method: methods_lib.Method
                          ) -> Tuple[TrainState, Metrics]:
  """One optimiser step; run inside shard_map over "data" (parameters replicated)."""
  context = methods_lib.Context(model=model, key=key, step=state.step, inputs=inputs)
  grads, metrics = gradients(state.params, batch, context, method=method)
  new_state = state.apply_gradients(grads=grads)
  updates = jax.tree.map(jnp.subtract, new_state.params, state.params)
  metrics = dict(metrics)
  metrics["l2_grads"] = optax.tree.norm(grads)
  metrics["l2_params"] = optax.tree.norm(new_state.params)
  metrics["l2_updates"] = optax.tree.norm(updates)
  return new_state, metrics


def make_train_step(mesh: jax.sharding.Mesh, *, model: nn.Module, method: methods_lib.Method
                    ) -> Callable[..., Tuple[TrainState, Metrics]]:
  """`step(state, batch, inputs, key) -> (state, metrics)`, compiled over `mesh`.

  `batch` arrays are split over "data" on their leading axis; the state, the method's step
  `inputs` (`Method.step_inputs`) and key are replicated. The state argument is donated.
  """
  step = functools.partial(per_device_train_step, model=model, method=method)
  sharded = jax.shard_map(step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()),
                          out_specs=(P(), P()))
  # Outputs carry exactly the sharding `parallel.replicate` gives the inputs, so the next call
  # hits the compilation cache.
  replicated = jax.sharding.NamedSharding(mesh, P())
  return jax.jit(sharded, out_shardings=(replicated, replicated), donate_argnums=0)
