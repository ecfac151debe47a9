"""Config checks, loss weights, optimiser groups, the ITQ start and model choice."""

import jax
import numpy as np
import pytest

from configs import cifar
from configs import digits
from configs import features
from ucsh_jax import baselines
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax.methods import ucsh as ucsh_method
from ucsh_jax import models


@pytest.mark.parametrize("field, value, message", [
    ("ablation", "X", "config.ablation"),
    ("batch_size", 20, "config.batch_size=20 must be a multiple of the 8 devices"),
    ("bits", 0, "config.bits=0"),
    ("optimizer.name", "lamb", "config.optimizer.name"),
    ("model.backbone", "resnet", "config.model.backbone"),
    ("model.dtype", "float16", "config.model.dtype"),
    ("loss.balance", "sum", "config.loss.balance"),
    ("similarity.target", "labels", "config.similarity.target"),
    ("model.top", "mlp", "config.model.top"),
    ("model.hash_init", "pca", "config.model.hash_init"),
    ("kmeans_metric", "l1", "config.kmeans_metric"),
    ("kmeans_inits", 0, "config.kmeans_inits=0"),
    ("similarity.num_neighbours", -1, "config.similarity.num_neighbours"),
    ("model.top", "fc", "config.model.top='fc' replaces"),
])
def test_impossible_configs_name_the_field(field, value, message):
  config = cifar.get_config()
  config.batch_size = 24
  parent, _, name = field.rpartition(".")
  (config[parent] if parent else config)[name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    experiment.validate(config, num_devices=8)


def test_pretrained_weights_need_a_backbone():
  config = digits.get_config()
  config.model.pretrained = "vgg16.pth"
  with pytest.raises(ValueError, match="backbone='none'"):
    experiment.validate(config, num_devices=1)


@pytest.mark.parametrize("ablation, expected", [
    ("", (1e-3, 10.0, 1e-2)), ("V", (0.0, 10.0, 1e-2)), ("C", (1e-3, 0.0, 1e-2)),
    ("S", (1e-3, 10.0, 0.0)), ("R", (1e-3, 10.0, 1e-2))])
def test_ablations_zero_one_weight(ablation, expected):
  config = cifar.get_config()
  config.ablation = ablation
  assert ucsh_method.ablated_weights(config) == expected
  config.loss.balance = "mean"
  assert tuple(ucsh_method.loss_weights(config, 64)) == (
      expected[0], expected[0], expected[1], expected[2])


@pytest.mark.parametrize("bits", [16, 32, 64])
def test_paper_balance_weights(bits):
  """w_rec = alpha d / (24 k^2), w_kl = alpha / (24 k), w_C = beta / (24 k), w_S = gamma / k^2."""
  config = cifar.get_config()
  config.bits = bits
  weights = ucsh_method.loss_weights(config, experiment.backbone_feature_dim(config))
  assert experiment.backbone_feature_dim(config) == 4096  # fc7.
  np.testing.assert_allclose(
      tuple(weights), (1e-3 * 4096 / (24 * bits**2), 1e-3 / (24 * bits), 10.0 / (24 * bits),
                       1e-2 / bits**2), rtol=1e-12)


def test_neighbour_count_by_default_a_tenth_of_the_training_set_at_16_bits():
  config = cifar.get_config()
  assert ucsh_method.num_neighbours(config, 1000) == 0  # Cosine targets need none.
  config.similarity.target = "neighbours"
  assert ucsh_method.num_neighbours(config, 1000) == 100
  config.bits = 32
  assert ucsh_method.num_neighbours(config, 1000) == 50
  config.similarity.num_neighbours = 250
  assert ucsh_method.num_neighbours(config, 1000) == 250


def test_feature_learning_rate_scale_applies_to_the_top_only():
  config = cifar.get_config()
  config.optimizer.feature_lr_scale = 0.1
  config.optimizer.name, config.optimizer.momentum = "sgd", 0.0
  params = {"top": {"w": np.ones(3, np.float32)}, "head": {"w": np.ones(3, np.float32)}}
  grads = jax.tree.map(np.ones_like, params)
  tx = experiment.make_optimizer(config, steps_per_epoch=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = config.optimizer.learning_rate
  np.testing.assert_allclose(updates["head"]["w"], -lr)
  np.testing.assert_allclose(updates["top"]["w"], -0.1 * lr, rtol=1e-6)


def test_itq_hash_layer_encodes_like_itq():
  config = features.get_config()
  config.bits = 8
  x = np.abs(np.random.default_rng(0).normal(size=(200, 16))).astype(np.float32)
  model = experiment.build_model(config, feature_dim=16)
  params = experiment.init_params(model, config, x[:1], jax.random.key(0), None)
  key = jax.random.key(1)
  params = experiment.itq_hash_layer(params, x, config.bits, key)
  codes = np.asarray(model.apply({"params": params}, x, train=False)["codes"])
  want = np.asarray(baselines.METHODS["itq"].encode(baselines.METHODS["itq"].fit(x, 8, key), x))
  np.testing.assert_array_equal(codes, want)


def test_model_choice_top_and_dropout():
  config = features.get_config()
  model = experiment.build_model(config, feature_dim=16)
  assert model.top is not None and model.head.dropout_rate == 0.0
  config.model.dropout_rate = 0.5
  model = experiment.build_model(config, feature_dim=16)
  assert model.top.dropout_rate == 0.5 and model.head.dropout_rate == 0.5
  config.model.top = "none"
  model = experiment.build_model(config, feature_dim=16)
  assert model.top is None and model.head.dropout_rate == 0.0  # Fixed inputs: no dropout.


def test_model_choice():
  config = cifar.get_config()
  config.ablation = "R"
  model = experiment.build_model(config)
  assert isinstance(model, models.UCSH) and model.head.code_activation == "tanh"
  config = digits.get_config()
  model = experiment.build_model(config, feature_dim=192)
  assert isinstance(model, experiment.FlatInputHashNet)
  assert model.head.feature_dim == 192 and model.head.code_activation == "sign"


def test_pretrained_names_go_through_the_download_cache(monkeypatch, tmp_path):
  asked = []

  def fake_download(name, cache_dir):
    asked.append((name, cache_dir))
    raise errors.UserError(f"put the file at {cache_dir}")

  monkeypatch.setattr(models, "download_pretrained", fake_download)
  monkeypatch.chdir(tmp_path)  # No file called "timm" here.
  config = cifar.get_config()
  config.model.pretrained = "timm"
  with pytest.raises(errors.UserError, match="put the file at"):
    experiment.preprocessing_for(config)
  assert asked == [("timm", experiment.WEIGHTS_CACHE)]
  config.model.pretrained = str(tmp_path / "missing.pth")
  with pytest.raises((FileNotFoundError, ValueError), match="missing.pth"):
    experiment.preprocessing_for(config)


def test_similarity_features_of_the_top_skip_its_dropout():
  config = features.get_config()
  config.model.dropout_rate = 0.5
  model = experiment.build_model(config, feature_dim=16)
  x = np.abs(np.random.default_rng(1).normal(size=(6, 16))).astype(np.float32)
  params = experiment.init_params(model, config, x[:1], jax.random.key(0), None)
  train = model.apply({"params": params}, x, train=True, code_noise=np.zeros((6, 16)),
                      rngs={"dropout": jax.random.key(1)})
  evaluated = model.apply({"params": params}, x, train=False)
  assert not np.allclose(train["features"], evaluated["features"])
  np.testing.assert_allclose(train["similarity_features"], evaluated["features"], rtol=1e-6)
