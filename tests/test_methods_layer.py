"""The methods layer: a method with two parameter groups (each updated from its own loss, its
own optimiser), the method a record or a result from before `method` existed implies, tables
rows by method, and the refusals of a method that does not exist or needs images."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits
from configs import ssdh as ssdh_config
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import run_record
from ucsh_jax import tables
from ucsh_jax import train_step as train_step_lib

import method_harness


class _TwoLayerHead(nn.Module):
  bits: int

  @nn.compact
  def __call__(self, x, *, train, code_noise=None):
    del train, code_noise
    logits = nn.Dense(self.bits, name="hash")(x)
    return {"logits": logits, "critic": nn.Dense(1, name="critic")(logits)[:, 0]}


class _Adversarial(methods.Method):
  """main loss: mean(logits^2) - mean(critic); critic loss: mean((critic - 1)^2)."""
  name = "toy"

  @classmethod
  def make_head(cls, config, feature_dim, dtype, dropout_rate):
    return _TwoLayerHead(config.bits)

  def param_group(self, path):
    return "critic" if "critic" in path else methods.MAIN_GROUP

  def loss_groups(self):
    return (methods.MAIN_GROUP, "critic")

  def group_optimizers(self, steps_per_epoch):
    return {"critic": optax.sgd(0.5)}

  def losses(self, params, batch, context):
    out = context.model.apply({"params": params}, batch["features"], train=True)
    main = methods.base.global_batch_mean(jnp.mean(out["logits"]**2) - jnp.mean(out["critic"]))
    critic = methods.base.global_batch_mean(jnp.mean((out["critic"] - 1.0)**2))
    return ({methods.MAIN_GROUP: main, "critic": critic},
            methods.base.same_on_all_devices({"loss": main, "loss_critic": critic}))


def _toy_setup():
  config = digits.get_config()
  config.model.top, config.optimizer.name = "none", "sgd"
  config.optimizer.learning_rate, config.optimizer.momentum = 0.1, 0.0
  config.bits = 8
  model = experiment.FlatInputHashNet(_Adversarial.make_head(config, 6, jnp.float32, 0.0))
  rng = np.random.default_rng(0)
  batch = {"features": rng.normal(size=(16, 6)).astype(np.float32),
           "index": np.arange(16, dtype=np.int32)}
  params = jax.device_get(model.init({"params": jax.random.key(0)}, batch["features"][:1],
                                     train=False)["params"])
  return config, _Adversarial(config, 6, jax.random.key(0)), model, params, batch


def test_each_group_moves_by_its_own_loss_and_optimiser():
  config, method, model, params, batch = _toy_setup()
  new, metrics = method_harness.steps_on(jax.devices()[:1], config, method, model, params,
                                         batch, np.float32(0), steps=1)
  x = batch["features"].astype(np.float64)
  w, b = (np.asarray(params["head"]["hash"][k], np.float64) for k in ("kernel", "bias"))
  v, c = (np.asarray(params["head"]["critic"][k], np.float64) for k in ("kernel", "bias"))
  h = x @ w + b
  critic = h @ v[:, 0] + c[0]
  n, k = h.shape
  # main = mean(h^2) - mean(critic): d/dh = 2h/(nk) - v^T/n, applied to the hash layer only.
  dh = 2 * h / (n * k) - np.outer(np.ones(n), v[:, 0]) / n
  np.testing.assert_allclose(new["head"]["hash"]["kernel"], w - 0.1 * x.T @ dh, rtol=1e-5)
  np.testing.assert_allclose(new["head"]["hash"]["bias"], b - 0.1 * dh.sum(0), rtol=1e-5)
  # critic = mean((critic - 1)^2), SGD at 0.5: the main loss's pull on the critic is not used.
  dc = 2 * (critic - 1) / n
  np.testing.assert_allclose(new["head"]["critic"]["kernel"][:, 0], v[:, 0] - 0.5 * h.T @ dc,
                             rtol=1e-5)
  np.testing.assert_allclose(new["head"]["critic"]["bias"], c - 0.5 * dc.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_critic"], np.mean((critic - 1)**2), rtol=1e-5)


def test_two_groups_on_eight_devices_equal_one():
  config, method, model, params, batch = _toy_setup()
  method_harness.assert_eight_devices_equal_one(config, method, model, params, batch,
                                                np.float32(0))


def test_the_group_mask_follows_the_key_path():
  _, method, _, params, _ = _toy_setup()
  mask = train_step_lib.group_mask(params, method, "critic")
  assert mask == {"head": {"hash": {"kernel": False, "bias": False},
                           "critic": {"kernel": True, "bias": True}}}


def _old_record(config):
  """A record as written before `method` existed: no such field."""
  flat = config.to_dict()
  flat.pop("method")
  return flat


def test_a_record_without_method_implies_it_and_an_old_ssdh_record_still_matches(tmp_path):
  ucsh = digits.get_config()
  assert run_record.upgrade(_old_record(ucsh))["method"] == "ucsh"
  assert run_record.differing_fields(_old_record(ucsh), ucsh.to_dict()) == []
  # Before the methods layer SSDH's config was UCSH's with SSDH's targets and no other term.
  old_ssdh = _old_record(digits.get_config())
  old_ssdh["similarity"]["target"] = "ssdh"
  old_ssdh["loss"].update(alpha=0.0, beta=0.0, gamma=0.0)
  old_ssdh["model"].update(code_activation="tanh", hash_init="random")
  now = ssdh_config.get_config("digits")
  assert run_record.upgrade(old_ssdh)["method"] == "ssdh"
  assert run_record.differing_fields(old_ssdh, now.to_dict()) == []
  now.model.code_activation = "sign"
  assert run_record.differing_fields(old_ssdh, now.to_dict()) == [
      "model.code_activation: 'tanh' -> 'sign'"]


def _result(folder, **fields):
  os.makedirs(folder)
  with open(os.path.join(folder, "results.json"), "w") as f:
    json.dump({"dataset": "digits", "bits": 16, "topk": None, **fields}, f)


def test_tables_put_each_method_in_its_table1_row(tmp_path):
  root = str(tmp_path)
  for i, name in enumerate(methods.NAMES):
    _result(os.path.join(root, name), method=name, map=0.1 + i / 100,
            **({"ablation": ""} if name == "ucsh" else {}))
  _result(os.path.join(root, "ucsh_v"), method="ucsh", ablation="V", map=0.5)
  # A result written before results recorded their method: its run.json says SSDH's targets.
  old = os.path.join(root, "old_ssdh")
  _result(old, ablation="", map=0.7, dataset="other")
  record = _old_record(digits.get_config())
  record["similarity"]["target"] = "ssdh"
  with open(os.path.join(old, "run.json"), "w") as f:
    json.dump({"format": run_record.FORMAT, "config": record}, f)
  values, _, _ = tables.collect(root)
  for i, name in enumerate(methods.NAMES):
    assert values[methods.row_label(name), "digits", 16] == pytest.approx(0.1 + i / 100)
  assert values["UCSH-V", "digits", 16] == 0.5
  assert values["SSDH", "other", 16] == 0.7
  table1 = tables.render(root).split("Table 2")[0]
  rows = [line.split(" | ")[0].strip("| ") for line in table1.splitlines()
            if line.startswith("| ") and "Method" not in line and "---" not in line]
  assert rows == [methods.row_label(n) for n in methods.NAMES]
  assert tables.TABLE1_ROWS.index("SSDH") < tables.TABLE1_ROWS.index("UCSH")


def test_a_method_that_does_not_exist_is_refused_with_the_names():
  config = digits.get_config()
  config.method = "hashnet"
  with pytest.raises(errors.UserError, match="config.method='hashnet' is no method; expected "
                     "one of " + ", ".join(methods.NAMES)):
    experiment.validate(config, 1)
