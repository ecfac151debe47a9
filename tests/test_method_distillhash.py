"""DistillHash as a method: its distilled pairs (refresh) and loss (value and gradient) against
NumPy, 1 device against 8, an end-to-end run with exact resume, and its config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import distillhash as distillhash_config
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import ops
from ucsh_jax import parallel
from ucsh_jax import train

import method_harness

P = jax.sharding.PartitionSpec
FEATURE_DIM, BATCH, NUM_TRAIN = 12, 24, 40


def _np_cos(x):
  x = np.asarray(x, np.float64)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  return unit @ unit.T


def _np_distilled(x, threshold, dissimilar_threshold, k, rho_similar, rho_dissimilar):
  """The distilled labels from the formulas: noisy labels, K cosine neighbours (self first),
  the K x K neighbour-pair fractions against the Bayes-optimal bounds."""
  s = 2 * _np_cos(x) - 1
  labels = np.where(s > threshold, 1, np.where(s < dissimilar_threshold, -1, 0))
  cos = _np_cos(x)
  np.fill_diagonal(cos, np.inf)
  neighbours = np.argsort(-cos, axis=1, kind="stable")[:, :k]
  n = len(x)
  out = np.zeros((n, n), np.int8)
  for i in range(n):
    for j in range(n):
      block = labels[np.ix_(neighbours[i], neighbours[j])]
      if labels[i, j] == 1 and np.mean(block == 1) > (1 + rho_dissimilar) / 2:
        out[i, j] = 1
      elif labels[i, j] == -1 and np.mean(block == -1) > (1 + rho_similar) / 2:
        out[i, j] = -1
  return out


def _features(n=NUM_TRAIN, seed=0):
  # Ten groups of sparse non-negative vectors (like ReLU features): a histogram of distances
  # with a mode, close pairs on its left, and neighbourhoods that mostly agree.
  rng = np.random.default_rng(seed)
  centers = np.maximum(rng.normal(size=(10, FEATURE_DIM)) - 0.8, 0.0) + 0.05
  noise = 0.5 * np.maximum(rng.normal(size=(n, FEATURE_DIM)) - 0.8, 0.0)
  return (centers[rng.integers(0, 10, n)] + noise).astype(np.float32)


def _config(**own):
  config = distillhash_config.get_config("features")
  config.bits, config.batch_size, config.model.dropout_rate = 16, BATCH, 0.0
  config.threshold_samples = 1000  # The whole training set: the estimate NumPy sees.
  for name, value in own.items():
    config.distillhash[name] = value
  return config


@pytest.mark.parametrize("own", [{}, {"labels": "ssdh"},
                                 {"num_neighbours": 3, "rho_similar": 0.2,
                                  "rho_dissimilar": 0.1}])
def test_refresh_distils_the_pairs_of_the_formulas_once(own):
  config = _config(**own)
  method = methods.build(config, FEATURE_DIM, jax.random.key(0))
  x = _features()
  state = method.refresh(x, method.empty_state(NUM_TRAIN), epoch=0, key=jax.random.key(5))
  estimate = ops.similarity_threshold(jnp.asarray(x))
  np.testing.assert_allclose(state.threshold, estimate.threshold, rtol=1e-6)
  np.testing.assert_allclose(state.threshold_right, estimate.threshold_right, rtol=1e-6)
  own = config.distillhash
  right = state.threshold if own.labels == "binary" else state.threshold_right
  want = _np_distilled(x, float(state.threshold), float(right), own.num_neighbours,
                       own.rho_similar, own.rho_dissimilar)
  assert state.pairs.dtype == np.int8 and state.pairs.shape == (NUM_TRAIN, NUM_TRAIN)
  np.testing.assert_array_equal(state.pairs, want)
  off = ~np.eye(NUM_TRAIN, dtype=bool)
  # Some pairs of each kind (SSDH's right threshold leaves no -1 pair on so few items).
  kinds = (1, 0) if own.labels == "ssdh" else (1, 0, -1)
  assert all(np.any(state.pairs[off] == kind) for kind in kinds)
  # The next epochs keep the pairs of the first, whatever their features.
  later = method.refresh(_features(seed=9), state, epoch=1, key=jax.random.key(6))
  assert int(later.epoch) == 1
  np.testing.assert_array_equal(later.pairs, state.pairs)
  assert float(later.threshold) == float(state.threshold)
  np.testing.assert_array_equal(method.batch_extras(state, np.array([3, 7]))["pairs"],
                                state.pairs[[3, 7]])


def _setup(seed=1):
  config = _config()
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  rng = np.random.default_rng(seed)
  index = rng.permutation(NUM_TRAIN)[:BATCH].astype(np.int32)
  x = _features()
  method = methods.build(config, FEATURE_DIM, jax.random.key(0))
  state = method.refresh(x, method.empty_state(NUM_TRAIN), epoch=0, key=jax.random.key(5))
  batch = {"features": x[index], "index": index, **method.batch_extras(state, index)}
  params = experiment.init_params(model, config, batch["features"][:1], jax.random.key(1), None)
  params["top"]["fc"]["kernel"] = (params["top"]["fc"]["kernel"] + 0.1 * rng.normal(
      size=(FEATURE_DIM, FEATURE_DIM))).astype(np.float32)
  return config, model, method, state, batch, params


def _np_loss_and_code_grad(codes, labels, scale):
  """Mean NLL over the labelled pairs and its gradient with respect to the codes."""
  omega = scale * codes @ codes.T
  s = (labels > 0).astype(np.float64)
  w = np.abs(labels)
  count = max(w.sum(), 1.0)
  loss = np.sum(w * (np.logaddexp(0.0, omega) - s * omega)) / count
  g_omega = w * (1.0 / (1.0 + np.exp(-omega)) - s) / count
  return loss, scale * (g_omega + g_omega.T) @ codes


def _grad_on_one_device(method, model):
  mesh = parallel.make_mesh(jax.devices()[:1])

  def grads(p, b, inputs, key, step):
    context = methods.Context(model=model, key=key, step=step, inputs=inputs)
    return jax.grad(lambda q: method.losses(q, b, context)[0][methods.MAIN_GROUP])(p)

  fn = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P(), P(),
                                                         P()), out_specs=P()))
  return lambda params, batch: jax.device_get(fn(
      params, parallel.global_batch(mesh, batch), np.float32(0.0), jax.random.key(0),
      np.int32(0)))


def test_loss_and_gradient_equal_the_likelihood_on_the_distilled_pairs():
  config, model, method, state, batch, params = _setup()
  losses, metrics = method_harness.losses_on(jax.devices()[:1], method, model)(
      params, batch, np.float32(0.0), jax.random.key(0))
  out = model.apply({"params": params}, batch["features"], train=False)
  top = np.asarray(out["features"], np.float64)
  logits = np.asarray(out["logits"], np.float64)
  codes = np.tanh(logits)
  index = batch["index"]
  labels = state.pairs[np.ix_(index, index)].astype(np.float64)
  np.fill_diagonal(labels, 0.0)  # An item with itself is no pair.
  assert np.any(labels == 1) and np.any(labels == -1) and np.any(labels == 0)
  want, grad_codes = _np_loss_and_code_grad(codes, labels, config.distillhash.scale)
  np.testing.assert_allclose(float(losses[methods.MAIN_GROUP]), want, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["distilled_pairs"]), np.mean(np.abs(labels)),
                             rtol=1e-6)
  # The hash layer's gradient: logits = top W + b, codes = tanh(logits).
  grad_logits = grad_codes * (1.0 - codes**2)
  grads = _grad_on_one_device(method, model)(params, batch)
  head = grads["head"]["hash"]
  np.testing.assert_allclose(head["kernel"], top.T @ grad_logits, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(head["bias"], grad_logits.sum(0), rtol=1e-4, atol=1e-7)


def test_eight_devices_equal_one():
  config, model, method, _, batch, params = _setup(seed=2)
  method_harness.assert_eight_devices_equal_one(config, method, model, params, batch,
                                                method.step_inputs(None))


def _digits_config(epochs):
  config = distillhash_config.get_config("digits")
  config.num_epochs = epochs
  config.data.num_query, config.data.num_train = 100, 256
  return config


def _digits_run(workdir, epochs):
  return train.train_and_evaluate(_digits_config(epochs), str(workdir))


def test_end_to_end_on_the_digits_and_exact_resume(tmp_path):
  whole = _digits_run(tmp_path / "whole", 2)
  assert whole["method"] == "distillhash"
  with open(tmp_path / "whole" / "results.json") as f:
    assert json.load(f)["method"] == "distillhash"
  assert 0.0 < whole["map"] <= 1.0
  _digits_run(tmp_path / "split", 1)
  resumed = _digits_run(tmp_path / "split", 2)
  assert resumed["steps"] == whole["steps"]
  assert resumed["map"] == whole["map"]
  params = [train.restore_params(train.setup(_digits_config(2), str(tmp_path / name),
                                             restoring=True))
            for name in ("whole", "split")]
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("field, value, message", [
    ("labels", "soft", "config.distillhash.labels='soft'"),
    ("num_neighbours", 0, "config.distillhash.num_neighbours=0"),
    ("rho_similar", 1.0, "config.distillhash.rho_similar=1.0"),
    ("rho_dissimilar", -0.1, "config.distillhash.rho_dissimilar=-0.1"),
    ("scale", 0.0, "config.distillhash.scale=0.0"),
])
def test_bad_fields_are_user_errors_naming_the_field(field, value, message):
  config = distillhash_config.get_config("digits")
  config.distillhash[field] = value
  with pytest.raises(errors.UserError, match=message):
    experiment.validate(config, 1)


def test_flip_rates_summing_to_one_are_a_user_error():
  config = distillhash_config.get_config("digits")
  config.distillhash.rho_similar, config.distillhash.rho_dissimilar = 0.6, 0.4
  with pytest.raises(errors.UserError, match="rho_similar \\+ rho_dissimilar"):
    experiment.validate(config, 1)
