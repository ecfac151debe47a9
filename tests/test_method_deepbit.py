"""DeepBit (ucsh_jax.methods.deepbit): its loss and gradient against NumPy, 1 device against 8,
its two stages, the digits run end to end with exact resume, its config errors, and the
refusal of a feature file at the command line."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import deepbit as deepbit_config
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import train
from ucsh_jax.methods import base
from ucsh_jax.methods import deepbit

import method_harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 16
SIZE = 6
# Quarter turns: the rotated views in NumPy are np.rot90 (independent of ops.rotate_images).
ANGLES = (90.0, 180.0)
SIGMA = 120.0


def _setup(seed=0):
  """The digits setting (a trainable top on the flattened pixels) on 6x6 images, SGD."""
  config = deepbit_config.get_config("digits")
  config.bits, config.batch_size = 8, BATCH
  config.data.image_size = SIZE
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.1
  config.optimizer.feature_lr_scale = 1.0
  config.deepbit.angles, config.deepbit.angle_sigma = ANGLES, SIGMA
  config.deepbit.quantization_weight, config.deepbit.balance_weight = 0.7, 2.0
  model = experiment.build_model(config, feature_dim=SIZE * SIZE * 3)
  rng = np.random.default_rng(seed)
  batch = {"image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
           "index": rng.permutation(100)[:BATCH].astype(np.int32)}
  params = experiment.init_params(model, config, batch["image"][:1], jax.random.key(1), None)
  params = jax.device_get(params)
  # A hash layer large enough that the bits are mixed and sigmoid is not near 0.5 everywhere.
  params["head"]["hash"]["kernel"] = rng.normal(
      0, 0.1, params["head"]["hash"]["kernel"].shape).astype(np.float32)
  params["top"]["fc"]["kernel"] = (params["top"]["fc"]["kernel"] + 0.05 * rng.normal(
      size=params["top"]["fc"]["kernel"].shape)).astype(np.float32)
  method = methods.build(config, SIZE * SIZE * 3, jax.random.key(0))
  return config, model, method, batch, params


def _numpy_loss_and_hash_grads(config, model, params, images, gamma):
  """The paper's objective and its gradient w.r.t. the hash layer, in float64 NumPy, from the
  features x of each image and of its np.rot90 copies."""
  own = config.deepbit
  features = lambda x: np.asarray(model.apply({"params": params}, x, train=False)["features"],
                                  np.float64)
  quarter_turns = {90.0: 1, -90.0: -1, 180.0: 2}
  x = features(images)
  x_rot = [features(np.rot90(images, quarter_turns[a], axes=(1, 2)).copy()) for a in ANGLES]
  kernel = np.asarray(params["head"]["hash"]["kernel"], np.float64)
  bias = np.asarray(params["head"]["hash"]["bias"], np.float64)
  sigmoid = lambda h: 1 / (1 + np.exp(-h))
  f = sigmoid(x @ kernel + bias)
  f_rot = [sigmoid(xr @ kernel + bias) for xr in x_rot]
  b = (x @ kernel + bias >= 0).astype(np.float64)
  n, a = len(images), len(ANGLES)
  c = np.exp(-np.square(ANGLES) / (2 * SIGMA**2))
  mu = b.mean(0)
  l1 = np.sum((b - f)**2) / (2 * n)
  l2 = np.sum((mu - 0.5)**2) / 2
  l3 = sum(ci * np.sum((fr - f)**2) for ci, fr in zip(c, f_rot)) / (2 * n * a)
  loss = own.quantization_weight * l1 + own.balance_weight * l2 + gamma * l3
  # d/dF: L1 with b fixed, L2 straight through b (d mu_m / d F_nm = 1/n), L3 on both sides.
  d_f = (own.quantization_weight * -(b - f) / n
         + own.balance_weight * np.broadcast_to((mu - 0.5) / n, f.shape)
         - gamma * sum(ci * (fr - f) for ci, fr in zip(c, f_rot)) / (n * a))
  d_h = d_f * f * (1 - f)
  grad_kernel, grad_bias = x.T @ d_h, d_h.sum(0)
  for ci, fr, xr in zip(c, f_rot, x_rot):
    d_hr = gamma * ci * (fr - f) / (n * a) * fr * (1 - fr)
    grad_kernel, grad_bias = grad_kernel + xr.T @ d_hr, grad_bias + d_hr.sum(0)
  return {"loss": loss, "quantization": l1, "balance": l2, "rotation": l3,
          "kernel": grad_kernel, "bias": grad_bias}


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_loss_equals_the_papers_three_terms(gamma):
  config, model, method, batch, params = _setup()
  losses, metrics = method_harness.losses_on(jax.devices()[:1], method, model)(
      params, batch, np.float32(gamma), jax.random.key(0))
  want = _numpy_loss_and_hash_grads(config, model, params, batch["image"], gamma)
  assert 0 < want["balance"] and 0 < want["rotation"]
  np.testing.assert_allclose(float(losses[methods.MAIN_GROUP]), want["loss"], rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_quantization"]), want["quantization"],
                             rtol=1e-4)
  np.testing.assert_allclose(float(metrics["loss_balance"]), want["balance"], rtol=1e-4)
  # In stage 1 (gamma = 0) the term is reported but not in the loss.
  np.testing.assert_allclose(float(metrics["loss_rotation"]), want["rotation"], rtol=1e-4)


def test_one_sgd_step_moves_the_hash_layer_by_the_numpy_gradient():
  config, model, method, batch, params = _setup(seed=3)
  gamma = 0.5
  new_params, _ = method_harness.steps_on(jax.devices()[:1], config, method, model, params,
                                          batch, np.float32(gamma), steps=1)
  want = _numpy_loss_and_hash_grads(config, model, params, batch["image"], gamma)
  lr = config.optimizer.learning_rate
  for name in ("kernel", "bias"):
    got = (np.asarray(params["head"]["hash"][name], np.float64)
           - np.asarray(new_params["head"]["hash"][name], np.float64)) / lr
    np.testing.assert_allclose(got, want[name], rtol=2e-3, atol=2e-6, err_msg=name)


def test_eight_devices_equal_one():
  config, model, method, batch, params = _setup(seed=5)
  method_harness.assert_eight_devices_equal_one(config, method, model, params, batch,
                                                np.float32(0.5))


def test_the_rotation_term_joins_at_rotation_from_epoch():
  config, _, method, _, _ = _setup()
  config.deepbit.rotation_from_epoch, config.deepbit.rotation_weight = 3, 0.25
  weight = lambda epoch: float(method.step_inputs(base.NoState(epoch=np.int32(epoch))))
  assert [weight(e) for e in (-1, 0, 2, 3, 7)] == [0.0, 0.0, 0.0, 0.25, 0.25]


def test_rotation_weights_are_the_authors_gaussian():
  np.testing.assert_allclose(deepbit.rotation_weights((-10, -5, 0, 5, 10), 5.0),
                             np.exp([-2, -0.5, 0, -0.5, -2]), rtol=1e-6)


def _digits_run(workdir, epochs):
  config = deepbit_config.get_config("digits")
  config.num_epochs, config.bits, config.batch_size = epochs, 8, 16
  config.deepbit.rotation_from_epoch = 1
  config.data.num_query, config.data.num_train, config.data.num_database = 40, 64, 160
  config.log_every_steps = 100
  return config, train.train_and_evaluate(config, str(workdir))


def _params(config, workdir):
  return train.restore_params(train.setup(config, str(workdir), restoring=True))


def test_digits_run_records_the_method_and_resumes_exactly(tmp_path):
  config, straight = _digits_run(tmp_path / "straight", 2)
  assert straight["method"] == "deepbit" and straight["steps"] == 8
  _digits_run(tmp_path / "resumed", 1)
  _, resumed = _digits_run(tmp_path / "resumed", 2)
  assert resumed["map"] == straight["map"]
  for a, b in zip(jax.tree.leaves(_params(config, tmp_path / "straight")),
                  jax.tree.leaves(_params(config, tmp_path / "resumed"))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field,value", [
    ("quantization_weight", -1.0), ("balance_weight", float("nan")),
    ("rotation_weight", -0.001), ("angles", ()), ("angles", (5.0, 270.0)),
    ("angle_sigma", 0.0), ("rotation_from_epoch", -1)])
def test_an_invalid_field_is_a_user_error_naming_it(field, value):
  config = deepbit_config.get_config("digits")
  config.deepbit[field] = value
  with pytest.raises(errors.UserError, match=f"config.deepbit.{field}="):
    experiment.validate(config, 1)


def test_a_feature_file_is_refused_at_the_command_line(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "feats.npz", features=rng.random((60, 8)).astype(np.float32),
           labels=np.arange(60) % 3)
  result = subprocess.run(
      [sys.executable, "-m", "ucsh_jax.main", f"--config={REPO}/configs/deepbit.py:features",
       f"--config.data.path={tmp_path / 'feats.npz'}", f"--workdir={tmp_path / 'run'}"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(lines) == 1 and "needs the images" in lines[0], result.stderr[-3000:]
