"""Bi-half as a method: its loss and gradient against NumPy, the halves over the global batch
(1 device = 8), a digits run that resumes exactly, and its config field's refusal."""

import jax
import numpy as np
import pytest

from configs import bihalf as bihalf_config
import method_harness
import pair_cosine_reference as ref
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import train

FEATURE_DIM, BATCH, BITS = 12, 16, 8


def _setup(config):
  config.bits, config.batch_size = BITS, BATCH
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  rng = np.random.default_rng(0)
  batch = {"features": np.abs(rng.normal(size=(BATCH, FEATURE_DIM))).astype(np.float32),
           "index": rng.permutation(100)[:BATCH].astype(np.int32)}
  params = jax.device_get(experiment.init_params(model, config, batch["features"][:1],
                                                 jax.random.key(1), None))
  # A bias that puts most of a bit's U on one side of 0: the halves differ from sign(U).
  params["head"]["hash"]["bias"] = params["head"]["hash"]["bias"] + 0.5
  method = methods.build(config, FEATURE_DIM, jax.random.key(0))
  return config, model, batch, params, method


def _numpy_loss_and_grads(config, batch, params):
  """L = mean_i (cos(B_i, B_{i+P}) - cos(x_i, x_{i+P}))^2 + gamma/(2NK) ||U - B||^2 with B the
  bi-half codes of U over the whole batch; dL/dU = dL/dB + gamma (U - B)/(NK) (the authors'
  backward), and the gradient w.r.t. W and b."""
  x = batch["features"].astype(np.float64)
  u = x @ params["head"]["hash"]["kernel"].astype(np.float64) + params["head"]["hash"]["bias"]
  b = ref.bi_half(u)
  assert np.any(b != np.where(u >= 0, 1.0, -1.0))
  pair, grad_b = ref.pair_loss_and_grad(b, x)
  gamma = config.bihalf.gamma
  penalty = gamma / (2 * u.size) * np.sum((u - b)**2)
  grad_u = grad_b + gamma * (u - b) / b.size
  return pair + penalty, pair, penalty, x.T @ grad_u, grad_u.sum(0)


def test_loss_of_the_step_matches_numpy():
  config, model, batch, params, method = _setup(bihalf_config.get_config("features"))
  losses, metrics = method_harness.losses_on(jax.devices()[:1], method, model)(
      params, batch, method.step_inputs(method.empty_state(100)), jax.random.key(0))
  want, pair, penalty, _, _ = _numpy_loss_and_grads(config, batch, params)
  assert pair > 0.01 and penalty > 0.01
  np.testing.assert_allclose(float(losses[methods.MAIN_GROUP]), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_cosine"]), pair, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_penalty"]), penalty, rtol=1e-5)


def test_one_sgd_step_follows_the_authors_gradient():
  """One step of plain SGD moves the hash layer by -lr times the NumPy gradient."""
  config = bihalf_config.get_config("features")
  config.optimizer.momentum, config.optimizer.weight_decay = 0.0, 0.0
  config.optimizer.learning_rate = 0.01
  config, model, batch, params, method = _setup(config)
  new, _ = method_harness.steps_on(jax.devices()[:1], config, method, model, params, batch,
                                   method.step_inputs(method.empty_state(100)), steps=1)
  _, _, _, grad_w, grad_b = _numpy_loss_and_grads(config, batch, params)
  lr = config.optimizer.learning_rate
  got_w = (params["head"]["hash"]["kernel"] - new["head"]["hash"]["kernel"]) / lr
  got_b = (params["head"]["hash"]["bias"] - new["head"]["hash"]["bias"]) / lr
  np.testing.assert_allclose(got_w, grad_w, rtol=2e-3, atol=2e-5 * np.abs(grad_w).max())
  np.testing.assert_allclose(got_b, grad_b, rtol=2e-3, atol=2e-5 * np.abs(grad_b).max())


def test_eight_devices_equal_one():
  """Two examples a device: halves taken per device would differ from the global ones."""
  config = bihalf_config.get_config("features")
  config.optimizer.learning_rate = 0.01
  config, model, batch, params, method = _setup(config)
  method_harness.assert_eight_devices_equal_one(
      config, method, model, params, batch, method.step_inputs(method.empty_state(100)))


def _digits(epochs):
  config = bihalf_config.get_config("digits")
  config.num_epochs, config.bits = epochs, 16
  config.data.num_query, config.data.num_train, config.data.num_database = 40, 64, 160
  config.eval.batch_size, config.log_every_steps = 64, 100
  return config


def test_digits_run_records_the_method_and_resumes_exactly(tmp_path):
  whole = train.train_and_evaluate(_digits(2), str(tmp_path / "whole"))
  assert whole["method"] == "bihalf" and whole["steps"] == 4
  train.train_and_evaluate(_digits(1), str(tmp_path / "split"))
  resumed = train.train_and_evaluate(_digits(2), str(tmp_path / "split"))
  assert resumed["method"] == "bihalf" and resumed["steps"] == 4
  params = [train.restore_params(train.setup(_digits(2), str(tmp_path / name),
                                             restoring=True)) for name in ("whole", "split")]
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed["map"] == whole["map"]


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_gamma_is_refused(value):
  config = bihalf_config.get_config("digits")
  config.bihalf.gamma = value
  with pytest.raises(errors.UserError, match=r"config\.bihalf\.gamma"):
    experiment.validate(config, num_devices=1)


def test_a_batch_without_pairs_is_refused():
  config = bihalf_config.get_config("digits")
  config.batch_size = 1
  with pytest.raises(errors.UserError, match=r"config\.batch_size=1"):
    experiment.validate(config, num_devices=1)


def test_another_methods_field_is_unknown():
  """greedyhash.alpha is GreedyHash's: Bi-half's config has no such group."""
  for variant in (None, "features", "digits", "finetune"):
    assert "greedyhash" not in bihalf_config.get_config(variant)
