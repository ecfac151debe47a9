"""TBH (ucsh_jax/methods/tbh.py): against the authors' TensorFlow code (a committed fixture),
against a NumPy forward pass, 1 device against 8, the per-example noise, an end-to-end run
with exact resume, and its config fields."""

import json
import os

import jax
import numpy as np
import pytest

from configs import tbh as tbh_config
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import parallel
from ucsh_jax import train
from ucsh_jax import train_step as train_step_lib
from ucsh_jax.methods import tbh

import method_harness

P = jax.sharding.PartitionSpec
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tbh_reference.npz")
LAYERS = ("encoder_hidden", "encoder_code", "encoder_continuous", "gcn", "decoder_hidden",
          "decoder_out", "critic_binary", "critic_continuous")


def _config(bits=8, hidden=12, continuous=6, code_noise="uniform"):
  config = tbh_config.get_config("features")
  config.bits, config.batch_size = bits, 16
  config.tbh.hidden_dim, config.tbh.continuous_dim = hidden, continuous
  config.tbh.code_noise = code_noise
  return config


class _FixedNoise(tbh.TBH):
  """TBH with the fixture's noise instead of its own draw."""

  fixed = None

  def noise(self, context, batch):
    del context, batch
    return self.fixed


def _gradients_on_one_device(method, model, params, batch):
  mesh = parallel.make_mesh(jax.devices()[:1])

  def fn(p, b, key):
    context = methods.Context(model=model, key=key, step=np.int32(0), inputs=np.float32(0))
    grads, metrics = train_step_lib.gradients(p, b, context, method=method)
    losses, _ = method.losses(p, b, context)
    return grads, losses, metrics

  sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                                  out_specs=(P(), P(), P())))
  rep = lambda x: parallel.replicate(mesh, x)
  return jax.device_get(sharded(rep(params), parallel.global_batch(mesh, batch),
                                rep(jax.random.key(0))))


@pytest.mark.parametrize("case", ["half", "uniform"])
def test_losses_and_gradients_equal_the_authors_code(case):
  """The fixture holds the authors' model (TF, their layers and losses) on 8 items; the same
  weights and noise in the JAX head give its actor and critic losses and the gradients their
  step applies (actor -> encoder, graph convolution, decoder; critic -> discriminators)."""
  ref = np.load(FIXTURE)
  n, d = ref["x"].shape
  config = _config(bits=ref["eps"].shape[1], hidden=ref["params/encoder_hidden/bias"].shape[0],
                   continuous=ref["sample_continuous"].shape[1],
                   code_noise="none" if case == "half" else "uniform")
  config.batch_size = n
  model = experiment.build_model(config, feature_dim=d)
  params = {"head": {layer: {"kernel": ref[f"params/{layer}/kernel"],
                             "bias": ref[f"params/{layer}/bias"]} for layer in LAYERS}}
  shapes = jax.tree.map(np.shape, experiment.init_params(
      model, config, ref["x"][:1], jax.random.key(0), None))
  assert jax.tree.map(np.shape, params) == shapes
  method = _FixedNoise(config, d, jax.random.key(0))
  method.fixed = {"threshold": ref["eps"] if case == "uniform" else np.full_like(ref["eps"], .5),
                  "binary": ref["sample_binary"], "continuous": ref["sample_continuous"]}
  batch = {"features": ref["x"], "index": np.arange(n, dtype=np.int32)}
  grads, losses, metrics = _gradients_on_one_device(method, model, params, batch)
  np.testing.assert_allclose(losses["main"], ref[f"{case}/actor"], rtol=1e-5)
  np.testing.assert_allclose(losses["critic"], ref[f"{case}/critic"], rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], ref[f"{case}/actor"], rtol=1e-5)
  for layer in LAYERS:
    for part in ("kernel", "bias"):
      want = ref[f"{case}/grad/{layer}/{part}"]
      assert np.abs(want).max() > 0, (layer, part)
      np.testing.assert_allclose(grads["head"][layer][part], want, rtol=2e-4, atol=2e-5,
                                 err_msg=f"{layer}/{part}")


def _numpy_tbh(params, x, noise, power=1.4):
  """The module's equations in NumPy (float64): (actor, critic)."""
  h = {k: {p: np.asarray(v, np.float64) for p, v in layer.items()}
       for k, layer in params["head"].items()}
  dense = lambda name, v: v @ h[name]["kernel"] + h[name]["bias"]
  sigmoid = lambda v: 1 / (1 + np.exp(-v))
  relu = lambda v: np.maximum(v, 0)
  z = relu(dense("encoder_hidden", x))
  b = (np.sign(sigmoid(dense("encoder_code", z)) - noise["threshold"]) + 1) / 2
  c = sigmoid(dense("encoder_continuous", z))
  k = b.shape[1]
  hamming = (b[:, None, :] != b[None, :, :]).sum(-1)
  a = (1 - hamming / k)**power
  deg = a.sum(1) + 1e-8
  lap = a / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
  bottleneck = sigmoid(lap @ dense("gcn", c))
  rec = relu(dense("decoder_out", relu(dense("decoder_hidden", bottleneck))))
  eps = 1e-7
  bce = lambda t, p: -(t * np.log(np.clip(p, eps, 1 - eps) + eps)
                       + (1 - t) * np.log(1 - np.clip(p, eps, 1 - eps) + eps))
  d_b = lambda v: sigmoid(dense("critic_binary", v))[:, 0]
  d_c = lambda v: sigmoid(dense("critic_continuous", v))[:, 0]
  adv_b = bce(1, d_b(noise["binary"])).mean() + bce(0, d_b(b)).mean()
  adv_c = bce(1, d_c(noise["continuous"])).mean() + bce(0, d_c(bottleneck)).mean()
  rec_loss = 0.5 * np.sum((rec - x)**2)
  return rec_loss - adv_b - adv_c, adv_b + adv_c


def _setup(seed=0, n=16, d=10, code_noise="uniform"):
  config = _config(bits=8, hidden=12, continuous=6, code_noise=code_noise)
  config.batch_size = n
  model = experiment.build_model(config, feature_dim=d)
  rng = np.random.default_rng(seed)
  batch = {"features": np.maximum(rng.normal(0.5, 1, (n, d)), 0).astype(np.float32),
           "index": rng.permutation(200)[:n].astype(np.int32)}
  params = experiment.init_params(model, config, batch["features"][:1], jax.random.key(seed),
                                  None)
  method = methods.build(config, d, jax.random.key(0))
  return config, model, method, params, batch


@pytest.mark.parametrize("code_noise", ["uniform", "none"])
def test_losses_equal_numpy_with_the_methods_own_noise(code_noise):
  """The method's losses (its own per-example noise, on 8 devices) equal the NumPy formula."""
  config, model, method, params, batch = _setup(code_noise=code_noise)
  key, step = jax.random.key(5), 3
  losses, metrics = method_harness.losses_on(jax.devices(), method, model)(
      params, batch, np.float32(0), key, step)
  noise = jax.device_get(tbh.tbh_noise(key, np.int32(step), batch["index"], config.bits,
                                       config.tbh.continuous_dim, code_noise))
  if code_noise == "none":
    assert np.all(noise["threshold"] == 0.5)
  else:
    assert 0 < noise["threshold"].min() and noise["threshold"].max() < 1
  assert set(np.unique(noise["binary"])) == {0.0, 1.0}
  actor, critic = _numpy_tbh(jax.device_get(params), batch["features"].astype(np.float64),
                             noise)
  np.testing.assert_allclose(losses["main"], actor, rtol=1e-5)
  np.testing.assert_allclose(losses["critic"], critic, rtol=1e-5)
  assert 0 < metrics["bits_on"] < 1


def test_noise_is_drawn_per_example():
  """An example's noise depends on (key, step, its index), not on its batch position."""
  index = np.array([7, 3, 11, 40], np.int32)
  full = tbh.tbh_noise(jax.random.key(1), np.int32(2), index, 8, 6, "uniform")
  part = tbh.tbh_noise(jax.random.key(1), np.int32(2), index[[2, 0]], 8, 6, "uniform")
  later = tbh.tbh_noise(jax.random.key(1), np.int32(3), index, 8, 6, "uniform")
  for name in full:
    np.testing.assert_array_equal(np.asarray(full[name])[[2, 0]], part[name])
  assert not np.allclose(full["threshold"], later["threshold"])


def test_critic_layers_form_their_own_group():
  config, _, method, params, _ = _setup()
  groups = jax.tree_util.tree_map_with_path(
      lambda path, _: method.param_group(train_step_lib.key_path(path)), params)
  for layer, leaves in groups["head"].items():
    want = "critic" if layer.startswith("critic_") else "main"
    assert set(leaves.values()) == {want}, layer
  assert method.loss_groups() == ("main", "critic")
  assert set(method.group_optimizers(2)) == {"critic"}
  del config


def test_eight_devices_equal_one():
  config, model, method, params, batch = _setup(seed=2)
  method_harness.assert_eight_devices_equal_one(config, method, model, params, batch,
                                                np.float32(0), rtol=2e-4, atol=2e-6)


def test_each_group_learns_from_its_own_loss_only():
  """After one step from the same start: the critic layers moved as Adam on the critic
  loss's gradient (first Adam step: lr * sign(g)), the encoder as Adam on the actor's."""
  config, model, method, params, batch = _setup(seed=3)
  config.optimizer.learning_rate, config.tbh.critic_learning_rate = 1e-3, 1e-2
  method = methods.build(config, batch["features"].shape[1], jax.random.key(0))
  new, _ = method_harness.steps_on(jax.devices()[:1], config, method, model, params, batch,
                                   np.float32(0), steps=1)
  key = jax.random.key(2)  # steps_on's key
  mesh = parallel.make_mesh(jax.devices()[:1])
  rep = lambda x: parallel.replicate(mesh, x)

  def group_grad(group):
    def fn(p, b):
      context = methods.Context(model=model, key=key, step=np.int32(0), inputs=np.float32(0))
      return jax.grad(lambda q: method.losses(q, b, context)[0][group])(p)
    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS)),
                                    out_specs=P()))
    return jax.device_get(sharded(rep(params), parallel.global_batch(mesh, batch)))

  actor_g, critic_g = group_grad("main"), group_grad("critic")
  for layer, lr, g in (("critic_binary", 1e-2, critic_g), ("encoder_code", 1e-3, actor_g),
                       ("gcn", 1e-3, actor_g)):
    moved = np.asarray(new["head"][layer]["kernel"]) - np.asarray(params["head"][layer]["kernel"])
    grad = g["head"][layer]["kernel"]
    mask = np.abs(grad) > 1e-6
    assert mask.any()
    np.testing.assert_allclose(moved[mask], -lr * np.sign(grad[mask]), rtol=1e-3, err_msg=layer)


def _tiny_digits(epochs):
  config = tbh_config.get_config("digits")
  config.num_epochs = epochs
  config.bits, config.batch_size = 16, 32
  config.tbh.hidden_dim, config.tbh.continuous_dim = 32, 16
  config.data.num_query, config.data.num_train, config.data.num_database = 40, 64, 160
  config.eval.batch_size = 64
  config.log_every_steps = 1
  return config


def test_end_to_end_on_the_digits_resumes_exactly(tmp_path):
  whole = train.train_and_evaluate(_tiny_digits(2), str(tmp_path / "whole"))
  train.train_and_evaluate(_tiny_digits(1), str(tmp_path / "resumed"))
  resumed = train.train_and_evaluate(_tiny_digits(2), str(tmp_path / "resumed"))
  with open(tmp_path / "whole" / "results.json") as f:
    record = json.load(f)
  assert record["method"] == "tbh" and record["code_noise"] == "uniform"
  assert whole["steps"] == resumed["steps"] == 4
  assert whole["map"] == resumed["map"]
  # Both groups' parameters (and so their optimiser states on the way) equal to the bit.
  config = _tiny_digits(2)
  params = [jax.device_get(train.restore_params(train.setup(config, str(tmp_path / name),
                                                            restoring=True)))
            for name in ("whole", "resumed")]
  assert set(params[0]["head"]) == set(LAYERS)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params[0]),
                          jax.tree.leaves(params[1])):
    np.testing.assert_array_equal(a, b, err_msg=str(path))


@pytest.mark.parametrize("field, value", [
    ("tbh.hidden_dim", 0), ("tbh.continuous_dim", -3), ("tbh.adjacency_power", 0.0),
    ("tbh.adjacency_power", float("nan")), ("tbh.code_noise", "gaussian"),
    ("tbh.critic_learning_rate", -1e-4), ("model.hash_init", "itq")])
def test_bad_fields_are_refused_naming_the_field(field, value):
  config = tbh_config.get_config("features")
  group, name = field.split(".")
  with config.unlocked():
    config[group][name] = value
  with pytest.raises(errors.UserError, match=f"config.{field}="):
    experiment.validate(config, 1)


def test_every_variant_validates():
  for variant in (None, "features", "digits", "finetune"):
    experiment.validate(tbh_config.get_config(variant), 1)


def test_another_config_without_the_group_is_refused():
  config = tbh_config.get_config("features")
  with config.unlocked():
    del config["tbh"]
  with pytest.raises(errors.UserError, match="config.tbh"):
    experiment.validate(config, 1)
