"""The run's record: absolute paths from the entry point, what it stores, what may change."""

import json
import os

import numpy as np
import pytest

from configs import digits as digits_config
from configs import features as features_config
from configs import test as test_config
from test_pretrained import keras_layers
from test_pretrained import torchvision_state_dict
from test_pretrained import write_keras_h5
from test_pretrained import write_zip_pth
import tiny_runs
from ucsh_jax import cli
from ucsh_jax import errors
from ucsh_jax import run_record
from ucsh_jax import train
from ucsh_jax.data import fingerprint


def test_paths_are_made_absolute_and_names_urls_and_defaults_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  config = features_config.get_config()
  config.data.path = "feats/cifar.npz"
  config.data.manual_dir = "~/downloads"
  config.data.data_dir = "gs://bucket/tfds"
  config.model.pretrained = "timm"
  resolved = cli.resolve_config(config)
  assert resolved.data.path == str(tmp_path / "feats" / "cifar.npz")
  assert resolved.data.manual_dir == str(tmp_path / "home" / "downloads")
  assert resolved.data.data_dir == "gs://bucket/tfds"
  assert resolved.model.pretrained == "timm"
  assert config.data.path == "feats/cifar.npz"  # The flag's own value is left alone.
  (tmp_path / "timm").write_bytes(b"")  # A file of that name is a path after all.
  assert cli.resolve_config(config).model.pretrained == str(tmp_path / "timm")
  config.data.path = ""
  assert cli.resolve_config(config).data.path == ""
  assert cli.absolute_path("runs/x") == str(tmp_path / "runs" / "x")


def test_record_round_trip_and_what_may_change(tmp_path):
  config = digits_config.get_config()
  run_record.check_or_write(config, str(tmp_path), "/repo/configs/digits.py")
  assert run_record.load_config(str(tmp_path)).to_dict() == config.to_dict()
  record = run_record.read(str(tmp_path))
  assert record["config_file"] == "/repo/configs/digits.py"
  assert record["preprocessing"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                                     "channel_order": "RGB", "pixel_range": 1.0}
  assert record["weights"] == {"pretrained": "", "file": None, "format": None}

  longer = digits_config.get_config()
  longer.num_epochs, longer.eval.topk, longer.data.num_workers = 30, 100, 2
  run_record.check(longer, str(tmp_path))  # Allowed: neither the model nor the splits change.

  other = digits_config.get_config()
  other.bits, other.data.num_query, other.optimizer.name = 32, 200, "sgd"
  with pytest.raises(errors.UserError) as error:
    run_record.check_or_write(other, str(tmp_path), None)
  message = str(error.value)
  assert "bits: 16 -> 32" in message and "data.num_query: 300 -> 200" in message
  assert "optimizer.name: 'adam' -> 'sgd'" in message and "num_epochs" not in message
  assert run_record.load_config(str(tmp_path)).bits == 16  # The record is not overwritten.


@pytest.mark.parametrize("kind, fmt, channel_order", [("pth", "torch_zip", "RGB"),
                                                      ("h5", "hdf5", "BGR")])
def test_record_names_the_weights_and_their_preprocessing(tmp_path, kind, fmt, channel_order):
  path = tmp_path / f"vgg.{kind}"
  if kind == "pth":
    write_zip_pth(path, torchvision_state_dict())
  else:
    write_keras_h5(path, keras_layers())
  config = test_config.get_config()
  config.model.pretrained = str(path)
  record = run_record.describe(config, None)
  assert record["weights"] == {"pretrained": str(path), "file": str(path), "format": fmt}
  assert record["preprocessing"]["channel_order"] == channel_order


def test_tools_refuse_a_folder_without_a_run(tmp_path):
  with pytest.raises(errors.UserError, match="holds no run record"):
    run_record.load_config(str(tmp_path))
  with pytest.raises(errors.UserError, match="does not exist"):
    run_record.load_config(str(tmp_path / "absent"))
  (tmp_path / run_record.RECORD_FILE).write_text("{not json")
  with pytest.raises(errors.UserError, match="cannot read the run record"):
    run_record.load_config(str(tmp_path))
  assert os.path.exists(tmp_path / run_record.RECORD_FILE)


def test_resume_and_eval_refuse_data_that_no_longer_match_the_record(tmp_path):
  workdir, features, labels = tiny_runs.features_run(str(tmp_path))
  path = str(tmp_path / "data.npz")
  with open(run_record.record_path(workdir)) as f:
    assert json.load(f)["data_fingerprint"] == fingerprint.of_file(path)
  config = run_record.load_config(workdir)
  np.savez(path, features=features[::-1], labels=labels[::-1])  # Same size, other rows.
  with pytest.raises(errors.UserError, match="was trained on other data"):
    train.evaluate_checkpoint(config, workdir, write_codes=True)
  config.num_epochs = 2
  with pytest.raises(errors.UserError, match="was trained on other data"):
    train.train_and_evaluate(config, workdir)
