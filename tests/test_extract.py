"""--mode=features: every item's eval-mode features, with the splits, from a checkpoint or the
initial weights, readable by the features config; the baselines' --save_features writes the same
format."""


import numpy as np
import pytest

from configs import features as features_config
from configs import test as test_config
from ucsh_jax import data
from ucsh_jax import extract
from ucsh_jax import feature_file
from ucsh_jax import inference
from ucsh_jax import train


def test_features_of_the_initial_weights_are_the_configured_start(tmp_path):
  config = test_config.get_config()
  path = extract.extract_features(config, str(tmp_path))
  saved = np.load(path)
  run = train.setup(config, str(tmp_path))  # The same initialisation from config.seed.
  forward = inference.make_forward(run.model, run.mesh)
  ids = np.arange(len(run.source))
  want = inference.outputs_for(forward, run.state.params, run.source, ids, "features",
                               **train.eval_kwargs(run))
  np.testing.assert_allclose(saved["features"], want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(saved["ids"], ids)
  np.testing.assert_array_equal(saved["labels"], run.source.labels)
  for name, split in zip(("query", "database", "train"), run.splits):
    np.testing.assert_array_equal(saved[f"{name}_idx"], split)
  assert str(saved["provenance"]) == "fc7 of VGG16 (width 0.03125) randomly initialised with seed 0"


def test_features_of_a_trained_checkpoint_train_a_features_run(tmp_path):
  config = test_config.get_config()
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  before = np.load(extract.extract_features(test_config.get_config(), str(tmp_path / "fresh")))
  saved = np.load(extract.extract_features(config, str(workdir)))
  steps = config.num_epochs * (config.data.num_train // config.batch_size)
  assert str(saved["provenance"]) == (f"the model's features at checkpoint step {steps} of "
                                      f"{workdir}")
  assert not np.allclose(saved["features"], before["features"])  # Trained, not the start.

  source = data.get_source(_features_data(workdir / "features.npz"))
  assert source.features.shape == saved["features"].shape
  np.testing.assert_array_equal(source.given_splits["train_idx"], saved["train_idx"])


def _features_data(path):
  config = features_config.get_config()
  config.data.path = str(path)
  return config.data


def test_rows_that_are_a_subset_keep_their_ids_and_split_rows(tmp_path):
  splits = data.Splits(query=np.array([2, 9]), database=np.array([4, 5, 7]),
                       train=np.array([5, 7]))
  ids = np.array([9, 2, 4, 5, 7])  # Query rows first, as the baselines write them.
  features = np.arange(10, dtype=np.float32).reshape(5, 2)
  feature_file.write(str(tmp_path / "f.npz"), features, np.arange(5), ids, splits, "test")
  saved = np.load(tmp_path / "f.npz")
  np.testing.assert_array_equal(saved["ids"][saved["query_idx"]], [2, 9])
  np.testing.assert_array_equal(saved["ids"][saved["train_idx"]], [5, 7])
  np.testing.assert_array_equal(saved["ids"][saved["database_idx"]], [4, 5, 7])
  with pytest.raises(ValueError, match="train split has items that are not among the rows"):
    feature_file.write(str(tmp_path / "g.npz"), features, np.arange(5), ids,
                       splits._replace(train=np.array([3])), "test")
