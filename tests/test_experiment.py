"""Config checks, ablation weights and model choice."""

import pytest

from configs import cifar
from configs import digits
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import models


@pytest.mark.parametrize("field, value, message", [
    ("ablation", "X", "config.ablation"),
    ("batch_size", 20, "config.batch_size=20 must be a multiple of the 8 devices"),
    ("bits", 0, "config.bits=0"),
    ("optimizer.name", "lamb", "config.optimizer.name"),
    ("model.backbone", "resnet", "config.model.backbone"),
    ("model.dtype", "float16", "config.model.dtype"),
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
  assert tuple(experiment.loss_weights(config)) == expected


def test_model_choice():
  config = cifar.get_config()
  config.ablation = "R"
  model = experiment.build_model(config)
  assert isinstance(model, models.UCSH) and model.code_activation == "tanh"
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
