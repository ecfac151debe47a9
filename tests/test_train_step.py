"""The data-parallel train step: 8 devices equal 1 device on the same global batch; bfloat16
against float32; the similarity targets. (tests/test_objective.py checks the objective itself,
eq. 7, against NumPy.)"""

import jax
import numpy as np
import pytest

from configs import cifar
from configs import test as test_config
from configs import ssdh as ssdh_config
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import ops
from ucsh_jax import parallel
from ucsh_jax import train_step as train_step_lib
from ucsh_jax.methods import ucsh as ucsh_method

import method_harness

P = jax.sharding.PartitionSpec


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
  method = methods.build(config, experiment.backbone_feature_dim(config), jax.random.key(0))
  step_fn = train_step_lib.make_train_step(mesh, model=model, method=method)
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
  weights = ucsh_method.loss_weights(config, experiment.backbone_feature_dim(config))

  mesh_1 = parallel.make_mesh(jax.devices()[:1])
  loss_fn = jax.shard_map(
      lambda p, b, t, k: ucsh_method.ucsh_losses(p, b, t, k, 0, model=model,
                                                 weights=weights)[0],
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


# The hash bias of the bfloat16 comparison: every logit is BF16_BIAS times its bit's sign.
# At initialisation the tiny random VGG16 maps the noise images to nearly equal fc7 vectors:
# x W varies by about 4e-4 between images, while bfloat16 moves a logit by up to 1.2e-5, so
# a logit near 0 may take the other sign in the two dtypes, and one flipped code changes L_2
# by tens of percent. With the bias +-2^-3 (exact in bfloat16) and |x W| < 1e-3 (measured),
# no code can flip; every decoder sample (u < sigmoid(h)) has u at least 0.01 from
# sigmoid(+-2^-3) (asserted below), while x W moves sigmoid(h) by < 2.5e-4 and bfloat16 by
# about 3e-6; and L_KL (2e-3) is far above float32 rounding (at the initial logits, ~1e-4,
# it is 3e-8: rounding noise in either dtype).
BF16_BIAS = 2.0**-3


def test_bfloat16_step_matches_the_float32_step():
  """One bfloat16 step on 8 devices against the float32 step on the same batch and params.

  Measured (this batch): the loss terms within 1.6e-3 relative (L_2, whose value is only
  2.7e-4), the others within 3e-4; the update's norm within 5.1e-4, its cosine to the float32 update
  0.99995, and per parameter array at least 0.979 (conv1_1's kernel, the deepest in backprop).
  Tolerances: 1e-2 relative on each term (2.5 bfloat16 roundings of 2^-8, 6x the largest
  measured difference), the update's norm within 1e-2, cosine > 0.999 for the whole update
  and > 0.9 for every parameter array.
  """
  config, model, batch, state = _setup()
  signs = np.where(np.arange(config.bits) % 3 == 0, 1.0, -1.0)
  params = jax.tree.map(np.array, state.params)
  params["head"]["hash"]["bias"] = (BF16_BIAS * signs).astype(np.float32)
  key = jax.random.key(2)  # The key `_run` steps with, at step 0.
  noise = np.asarray(methods.base.code_noise(key, 0, batch["index"], config.bits))
  assert np.abs(noise - 1 / (1 + np.exp(-BF16_BIAS * signs))).min() > 0.01
  config.model.dtype = "bfloat16"
  model_bf16 = experiment.build_model(config)
  state = state.replace(params=params)
  params_32, metrics_32 = _run(jax.devices(), config, model, batch, state, steps=1)
  params_16, metrics_16 = _run(jax.devices(), config, model_bf16, batch,
                               state.replace(apply_fn=model_bf16.apply), steps=1)
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params_16))
  # Both steps saw the codes sign(bias): L_C of those codes, exactly.
  clustering = np.mean(np.sum((signs - batch["center"])**2, axis=1)) / config.bits
  assert metrics_32["loss_clustering"] == metrics_16["loss_clustering"] == np.float32(clustering)
  for name in ("loss", "loss_l2", "loss_reconstruction", "loss_kl", "loss_clustering",
               "loss_separating"):
    assert metrics_32[name] != 0, name
    np.testing.assert_allclose(metrics_16[name], metrics_32[name], rtol=1e-2, err_msg=name)
  update_32, update_16 = (
      np.concatenate([(np.asarray(new) - old).ravel() for new, old in
                      zip(jax.tree.leaves(p), jax.tree.leaves(params))])
      for p in (params_32, params_16))
  norm_32, norm_16 = np.linalg.norm(update_32), np.linalg.norm(update_16)
  assert norm_32 > 0
  np.testing.assert_allclose(norm_16, norm_32, rtol=1e-2)
  assert update_16 @ update_32 / (norm_16 * norm_32) > 0.999
  for (path, new_32), new_16, old in zip(jax.tree_util.tree_leaves_with_path(params_32),
                                         jax.tree.leaves(params_16), jax.tree.leaves(params)):
    u_32, u_16 = (np.ravel(np.asarray(new) - old) for new in (new_32, new_16))
    assert u_16 @ u_32 / (np.linalg.norm(u_16) * np.linalg.norm(u_32)) > 0.9, path


FEATURE_DIM, BATCH = 12, 24


def _features_setup(bits=16, target="cosine", seed=0):
  """The paper's config on feature vectors with the trainable top (so L_S has a gradient)."""
  config = cifar.get_config()
  config.bits, config.batch_size = bits, BATCH
  config.data.name, config.model.top = "features", "fc"
  config.model.dropout_rate = 0.0  # The literal objective below runs without dropout.
  config.similarity.target = target
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  rng = np.random.default_rng(seed)
  batch = {
      "features": np.abs(rng.normal(size=(BATCH, FEATURE_DIM))).astype(np.float32),
      "index": rng.permutation(100)[:BATCH].astype(np.int32),
      "center": np.asarray(ops.hash_centers(10, bits))[rng.integers(0, 10, BATCH)],
  }
  params = experiment.init_params(model, config, batch["features"][:1], jax.random.key(seed),
                                  None)
  # A perturbed top, so that the features (and s_ij) really depend on its parameters.
  params["top"]["fc"]["kernel"] = (params["top"]["fc"]["kernel"] + 0.1 * rng.normal(
      size=(FEATURE_DIM, FEATURE_DIM))).astype(np.float32)
  return config, model, batch, params


def _loss_on_one_device(model, weights, target="cosine"):
  mesh = parallel.make_mesh(jax.devices()[:1])
  fn = jax.shard_map(
      lambda p, b, t, k: ucsh_method.ucsh_losses(p, b, t, k, 0, model=model, weights=weights,
                                                 target=target),
      mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P(), P()), out_specs=(P(), P()))
  fn = jax.jit(fn)
  return lambda p, b, t, k: fn(parallel.replicate(mesh, p), parallel.global_batch(mesh, b),
                               parallel.replicate(mesh, t), parallel.replicate(mesh, k))


def _numpy_cos(x):
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  return unit @ unit.T


def test_neighbour_targets_of_the_step():
  config, model, batch, params = _features_setup(target="neighbours", seed=1)
  rng = np.random.default_rng(2)
  batch["neighbours"] = rng.integers(0, 100, size=(BATCH, 10)).astype(np.int32)
  batch["neighbours"][:, 0] = batch["index"]
  weights = ucsh_method.loss_weights(config, FEATURE_DIM)
  _, terms = _loss_on_one_device(model, weights, "neighbours")(params, batch, np.float32(0.3),
                                                               jax.random.key(0))
  codes = np.asarray(model.apply({"params": params}, batch["features"], train=False)["codes"],
                     np.float64)
  member = np.array([[batch["index"][j] in batch["neighbours"][i] for j in range(BATCH)]
                     for i in range(BATCH)])
  s = np.where(member | member.T, 1.0, -1.0)
  k = config.bits
  want = np.sum((k * s - codes @ codes.T)**2) / (BATCH**2 * k**2)
  np.testing.assert_allclose(float(terms["loss_l2"]), want, rtol=1e-4)


def test_ssdh_loss_of_the_step():
  """SSDH's method: L_2 on the pairs outside its two thresholds, with tanh codes."""
  config = ssdh_config.get_config("features")
  config.bits, config.batch_size, config.model.dropout_rate = 16, BATCH, 0.0
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  rng = np.random.default_rng(1)
  batch = {"features": np.abs(rng.normal(size=(BATCH, FEATURE_DIM))).astype(np.float32),
           "index": rng.permutation(100)[:BATCH].astype(np.int32)}
  params = experiment.init_params(model, config, batch["features"][:1], jax.random.key(1), None)
  params["top"]["fc"]["kernel"] = (params["top"]["fc"]["kernel"] + 0.1 * rng.normal(
      size=(FEATURE_DIM, FEATURE_DIM))).astype(np.float32)
  method = methods.build(config, FEATURE_DIM, jax.random.key(0))
  losses, _ = method_harness.losses_on(jax.devices()[:1], method, model)(
      params, batch, np.float32([0.6, 0.2]), jax.random.key(0))
  got = losses[methods.MAIN_GROUP]
  out = model.apply({"params": params}, batch["features"], train=False)
  x = np.asarray(out["features"], np.float64)
  codes = np.tanh(np.asarray(out["logits"], np.float64))
  sim = 2 * _numpy_cos(x) - 1
  s = np.where(sim > 0.6, 1.0, np.where(sim < 0.2, -1.0, 0.0))
  assert 0 < np.abs(s).sum() < BATCH**2
  k = config.bits
  want = np.sum(np.abs(s) * (k * s - codes @ codes.T)**2) / (BATCH**2 * k**2)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_step_similarities_come_from_dropout_free_features():
  config, _, batch, params = _features_setup(seed=3)
  config.model.dropout_rate = 0.5
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  weights = ucsh_method.loss_weights(config, FEATURE_DIM)
  _, terms = _loss_on_one_device(model, weights)(params, batch, np.float32(0.3),
                                                 jax.random.key(0))
  x = np.asarray(model.apply({"params": params}, batch["features"], train=False)["features"],
                 np.float64)
  want = -np.mean((2 * _numpy_cos(x) - 1 - 0.3)**2)
  np.testing.assert_allclose(float(terms["loss_separating"]), want, rtol=1e-4)
