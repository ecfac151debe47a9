"""The main job end to end on the tiny config: train, checkpoint, results, resume, encode."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import features as features_config
from configs import test as test_config
from ucsh_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _final_params(workdir, step):
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return restored["params"]


def test_tiny_config_trains_two_epochs_end_to_end(tmp_path):
  config = test_config.get_config()
  results = train.train_and_evaluate(config, str(tmp_path))
  steps = config.num_epochs * (config.data.num_train // config.batch_size)
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written == results
  for key in ("dataset", "bits", "topk", "map", "precision_at_k", "num_query", "num_database",
              "num_train", "epochs", "elapsed_s"):
    assert key in written
  assert written["dataset"] == "digits" and written["bits"] == config.bits
  assert (written["num_query"], written["num_train"]) == (40, 64)
  assert 0.0 < written["map"] <= 1.0 and written["steps"] == steps
  assert str(steps) in os.listdir(tmp_path / "checkpoints")
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
  for name in ("query", "database", "train"):
    assert (tmp_path / "splits" / f"{name}.npy").exists()

  # Training again with the same workdir resumes at the end: nothing changes.
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again["map"] == results["map"] and again["steps"] == steps

  # --mode=encode: codes of the final checkpoint, +-1 int8, with labels.
  train.evaluate_checkpoint(config, str(tmp_path), write_codes=True)
  codes = np.load(tmp_path / "codes.npz")
  assert codes["query_codes"].shape == (40, config.bits)
  assert codes["query_codes"].dtype == np.int8
  assert set(np.unique(codes["database_codes"])) <= {-1, 1}
  assert codes["database_labels"].shape == (written["num_database"],)
  with open(tmp_path / "eval_results.json") as f:
    assert json.load(f)["map"] == pytest.approx(results["map"])


def test_non_finite_loss_stops_with_the_step_named(tmp_path):
  config = test_config.get_config()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 1e30
  with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("moment", ["during_save", "after_save"])
def test_killed_run_resumes_to_the_same_parameters(tmp_path, moment):
  """kill -9 while the first asynchronous save is being written (only a temporary folder
  exists: the restart begins again) or once it is finished (the restart resumes from it)."""
  reference = tmp_path / "reference"
  config = test_config.get_config()
  train.train_and_evaluate(config, str(reference))
  steps = config.num_epochs * (config.data.num_train // config.batch_size)

  workdir = tmp_path / "killed"
  command = [sys.executable, "-m", "ucsh_jax.main", "--config=configs/test.py",
             f"--workdir={workdir}"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  checkpoints = workdir / "checkpoints"
  try:
    while process.poll() is None:
      entries = list(checkpoints.iterdir()) if checkpoints.exists() else []
      ready = (bool(entries) if moment == "during_save"
               else any(p.name.isdigit() for p in entries))
      if ready:
        process.kill()  # SIGKILL: no clean-up.
        break
      time.sleep(0.01)
  finally:
    process.wait(timeout=120)
  assert process.returncode == -9, "the run finished before it could be killed"
  assert not (workdir / "results.json").exists()
  # A finished save is a folder named by its step; one cut short is a temporary folder.
  saved = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]

  finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert finished.returncode == 0, finished.stderr[-3000:]
  if moment == "after_save":
    assert saved, "killed after a save, yet no finished checkpoint"
  if saved:
    assert f"Resumed from step {max(saved)} " in finished.stderr
  else:
    assert "Resumed from step" not in finished.stderr
  ref_params, params = _final_params(reference, steps), _final_params(workdir, steps)
  for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_feature_file_trains_with_its_own_splits(tmp_path):
  """configs/features.py on a multi-label .npz that carries its split indices."""
  rng = np.random.default_rng(0)
  labels = (rng.random((120, 5)) < 0.3).astype(np.int32)
  labels[labels.sum(1) == 0, 0] = 1
  centers = rng.random((5, 24)).astype(np.float32)
  features = labels @ centers + 0.1 * rng.random((120, 24)).astype(np.float32)
  order = rng.permutation(120)
  query_idx, database_idx = np.sort(order[:20]), np.sort(order[20:])
  train_idx = np.sort(database_idx[:64])
  path = tmp_path / "features.npz"
  np.savez(path, features=features, labels=labels, query_idx=query_idx,
           database_idx=database_idx, train_idx=train_idx)

  config = features_config.get_config()
  config.data.path = str(path)
  config.num_epochs, config.batch_size, config.eval.batch_size = 2, 16, 32
  config.bits, config.num_clusters, config.model.decoder_hidden = 8, 4, 16
  config.eval.topk = 50
  workdir = tmp_path / "run"
  results = train.train_and_evaluate(config, str(workdir))
  assert (results["num_query"], results["num_database"], results["num_train"]) == (20, 100, 64)
  np.testing.assert_array_equal(np.load(workdir / "splits" / "query.npy"), query_idx)
  np.testing.assert_array_equal(np.load(workdir / "splits" / "train.npy"), train_idx)
  assert results["dataset"] == "features" and results["topk"] == 50
  assert 0.0 < results["map"] <= 1.0
