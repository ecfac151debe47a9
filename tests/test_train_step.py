"""The data-parallel train step: 8 devices equal 1 device on the same global batch."""

import jax
import numpy as np
import pytest

from configs import test as test_config
from ucsh_jax import experiment
from ucsh_jax import ops
from ucsh_jax import parallel
from ucsh_jax import train_step as train_step_lib


def _setup(ablation=""):
  config = test_config.get_config()
  config.ablation = ablation
  config.model.dropout_rate = 0.0  # Dropout masks depend on the device layout.
  # Plain SGD: Adam divides by the gradient's magnitude and so magnifies float rounding in
  # near-zero gradient entries, which would hide a real difference behind a loose tolerance.
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.05
  model = experiment.build_model(config)
  rng = np.random.default_rng(0)
  size = config.data.image_size
  batch = {
      "image": rng.normal(size=(16, size, size, 3)).astype(np.float32),
      "index": rng.permutation(64)[:16].astype(np.int32),
      "center": np.asarray(ops.hash_centers(4, config.bits))[rng.integers(0, 4, 16)],
  }
  params = experiment.init_params(model, config, batch["image"][:1], jax.random.key(1), None)
  tx = experiment.make_optimizer(config, steps_per_epoch=4)
  # Host copies: the compiled step donates (deletes) the device buffers it is given.
  return config, model, batch, jax.device_get(experiment.create_train_state(model, params, tx))


def _run(devices, config, model, batch, state, steps=2):
  mesh = parallel.make_mesh(devices)
  step_fn = train_step_lib.make_train_step(mesh, model=model,
                                           weights=experiment.loss_weights(config))
  state = parallel.replicate(mesh, state)
  threshold = parallel.replicate(mesh, np.float32(0.3))
  key = parallel.replicate(mesh, jax.random.key(2))
  for _ in range(steps):
    state, metrics = step_fn(state, parallel.global_batch(mesh, batch), threshold, key)
  assert step_fn._cache_size() == 1  # Compiled once: no retrace from step to step.
  return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.parametrize("ablation", ["", "R"])
def test_eight_devices_equal_one(ablation):
  assert jax.device_count() == 8
  config, model, batch, state = _setup(ablation)
  params_1, metrics_1 = _run(jax.devices()[:1], config, model, batch, state)
  params_8, metrics_8 = _run(jax.devices(), config, model, batch, state)
  flat_1, flat_8 = jax.tree.leaves(params_1), jax.tree.leaves(params_8)
  changed = [not np.allclose(a, b) for a, b in zip(flat_1, jax.tree.leaves(state.params))]
  assert any(changed)  # The step really moved the parameters.
  for a, b in zip(flat_1, flat_8):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for name in metrics_1:
    np.testing.assert_allclose(metrics_1[name], metrics_8[name], rtol=1e-4, atol=1e-6)


def test_gradient_is_that_of_the_global_objective():
  """One SGD step on 8 devices moves the parameters by -lr * grad of the one-device loss."""
  config, model, batch, state = _setup()
  lr = config.optimizer.learning_rate  # The first momentum-SGD step is -lr * grad.
  weights = experiment.loss_weights(config)

  mesh_1 = parallel.make_mesh(jax.devices()[:1])
  loss_fn = jax.shard_map(
      lambda p, b, t, k: train_step_lib.ucsh_losses(p, b, t, k, 0, model=model,
                                                    weights=weights, reduction="mean")[0],
      mesh=mesh_1, in_specs=(jax.sharding.PartitionSpec(),
                             jax.sharding.PartitionSpec(parallel.DATA_AXIS),
                             jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec()),
      out_specs=jax.sharding.PartitionSpec())
  grads = jax.jit(jax.grad(loss_fn))(
      parallel.replicate(mesh_1, state.params), parallel.global_batch(mesh_1, batch),
      parallel.replicate(mesh_1, np.float32(0.3)), parallel.replicate(mesh_1, jax.random.key(2)))
  params_8, _ = _run(jax.devices(), config, model, batch, state, steps=1)
  expected = jax.tree.map(lambda p, g: np.asarray(p) - lr * np.asarray(g), state.params, grads)
  for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_step_keeps_float32_params_and_finite_losses():
  config, _, batch, _ = _setup()
  config.model.dtype = "bfloat16"
  model = experiment.build_model(config)
  params = experiment.init_params(model, config, batch["image"][:1], jax.random.key(1), None)
  tx = experiment.make_optimizer(config, steps_per_epoch=4)
  state = jax.device_get(experiment.create_train_state(model, params, tx))
  new_params, metrics = _run(jax.devices(), config, model, batch, state, steps=1)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(new_params))
  assert all(np.isfinite(v) for v in metrics.values())
  assert metrics["l2_updates"] > 0
