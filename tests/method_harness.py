"""Runs a method's losses and the shared train step on a given set of devices, for the method
tests: the values against NumPy on one device, and 1 device against 8."""

from typing import Any, Callable, Dict

import jax
import numpy as np

from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import parallel
from ucsh_jax import train_step as train_step_lib

P = jax.sharding.PartitionSpec


def losses_on(devices, method: methods.Method, model) -> Callable[..., Any]:
  """`fn(params, batch, inputs, key, step=0) -> ({group: loss}, metrics)` as host arrays, the
  batch split over `devices`."""
  mesh = parallel.make_mesh(devices)

  def losses(p, b, inputs, key, step):
    context = methods.Context(model=model, key=key, step=step, inputs=inputs)
    return method.losses(p, b, context)

  fn = jax.jit(jax.shard_map(losses, mesh=mesh,
                             in_specs=(P(), P(parallel.DATA_AXIS), P(), P(), P()),
                             out_specs=(P(), P())))

  def run(params, batch, inputs, key, step=0):
    rep = lambda x: parallel.replicate(mesh, x)
    return jax.device_get(fn(rep(params), parallel.global_batch(mesh, batch), rep(inputs),
                             rep(key), rep(np.int32(step))))

  return run


def steps_on(devices, config, method: methods.Method, model, params, batch: Dict[str, Any],
             inputs, *, steps: int = 2, steps_per_epoch: int = 4):
  """(params, metrics) as host arrays after `steps` train steps from `params` on `batch`."""
  mesh = parallel.make_mesh(devices)
  tx = experiment.make_optimizer(config, steps_per_epoch, method)
  state = parallel.replicate(mesh, jax.device_get(
      experiment.create_train_state(model, params, tx)))
  step_fn = train_step_lib.make_train_step(mesh, model=model, method=method)
  inputs = parallel.replicate(mesh, inputs)
  key = parallel.replicate(mesh, jax.random.key(2))
  metrics = None
  for _ in range(steps):
    state, metrics = step_fn(state, parallel.global_batch(mesh, batch), inputs, key)
  return jax.device_get(state.params), jax.device_get(metrics)


def assert_eight_devices_equal_one(config, method, model, params, batch, inputs, *,
                                   rtol: float = 1e-4, atol: float = 1e-6) -> None:
  """Two steps on 8 devices give the parameters and metrics of two steps on 1 device, and
  the steps moved the parameters."""
  assert jax.device_count() == 8
  params_1, metrics_1 = steps_on(jax.devices()[:1], config, method, model, params, batch,
                                 inputs)
  params_8, metrics_8 = steps_on(jax.devices(), config, method, model, params, batch, inputs)
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params_1),
                                                   jax.tree.leaves(params))]
  assert any(moved)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params_1),
                          jax.tree.leaves(params_8)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=str(path))
  for name in metrics_1:
    np.testing.assert_allclose(metrics_1[name], metrics_8[name], rtol=rtol, atol=atol,
                               err_msg=name)
