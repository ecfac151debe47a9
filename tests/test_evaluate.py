"""The evaluation path: the codes it scores are the model's sign, and `evaluate.score` equals
NumPy's MAP@topk, precision@k at each cut-off and precision within Hamming radius 2."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import features as features_config
import retrieval_reference
from ucsh_jax import errors
from ucsh_jax import evaluate
from ucsh_jax import experiment
from ucsh_jax import index
from ucsh_jax import inference
from ucsh_jax import parallel

FEATURE_DIM, BITS = 10, 8


@pytest.mark.parametrize("ablation", ["", "R"])
def test_eval_codes_are_the_models_sign_with_sign_zero_plus_one(ablation):
  """On 8 devices, with logits exactly 0 in two bits: codes = +1 there, sign(h) elsewhere."""
  config = features_config.get_config()
  config.bits, config.ablation, config.model.decoder_hidden = BITS, ablation, 8
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(16, FEATURE_DIM)).astype(np.float32)
  params = jax.tree.map(np.array, experiment.init_params(model, config, inputs[:1],
                                                        jax.random.key(0), None))
  hash_layer = params["head"]["hash"]
  hash_layer["kernel"][:, :2] = 0.0
  hash_layer["bias"][:2] = 0.0
  mesh = parallel.make_mesh()
  out = inference.make_forward(model, mesh)(parallel.replicate(mesh, params),
                                            parallel.global_batch(mesh, inputs))
  codes = np.asarray(out["codes"])
  model_out = model.apply({"params": params}, jnp.asarray(inputs), train=False)
  logits = np.asarray(model_out["logits"])
  assert np.all(logits[:, :2] == 0.0) and np.all(np.abs(logits[:, 2:]) > 1e-4)
  assert codes.dtype == np.int8
  np.testing.assert_array_equal(codes, np.where(logits >= 0, 1, -1))
  if ablation == "":  # The model's own codes (sign_ste), which the training losses see.
    np.testing.assert_array_equal(codes, np.asarray(model_out["codes"]))


@pytest.mark.parametrize("num_db, cut_offs", [(600, ["100", "500"]),
                                              (5000, ["100", "500", "1000", "5000"])])
def test_score_equals_numpy_at_every_cut_off(num_db, cut_offs):
  rng = np.random.default_rng(1)
  num_query, classes = 30, 4
  centers = np.where(rng.normal(size=(classes, 12)) >= 0, 1, -1)

  def draw(n):
    labels = rng.integers(0, classes, n)
    flips = np.where(rng.uniform(size=(n, 12)) < 0.25, -1, 1)
    return (centers[labels] * flips).astype(np.int8), labels

  (query_codes, query_labels), (db_codes, db_labels) = draw(num_query), draw(num_db)
  codes = {"query_codes": query_codes, "database_codes": db_codes,
           "query_labels": query_labels, "database_labels": db_labels}
  topk = 250
  got = evaluate.score(codes, topk)

  dist = retrieval_reference.hamming(query_codes, db_codes)
  relevant = retrieval_reference.relevance(query_labels, db_labels)
  ranked_rel = np.take_along_axis(relevant, np.argsort(dist, axis=1, kind="stable"), axis=1)
  within = dist <= 2
  hits = (within & relevant).sum(1)
  radius_precision = np.where(within.sum(1) > 0, hits / np.maximum(within.sum(1), 1), 0.0)

  # The cut-offs up to the database's size, and no others.
  assert sorted(got["precision_at_k"], key=int) == cut_offs
  for k, value in got["precision_at_k"].items():
    np.testing.assert_allclose(value, ranked_rel[:, :int(k)].mean(), rtol=1e-12, err_msg=k)
  np.testing.assert_allclose(got["map"], retrieval_reference.mean_average_precision(
      query_codes, db_codes, query_labels, db_labels, topk), rtol=1e-12)
  np.testing.assert_allclose(got["precision_within_radius_2"], radius_precision.mean(),
                             rtol=1e-12)
  assert got["topk"] == topk
  # The precisions differ from cut-off to cut-off, so a wrong k would show.
  assert abs(got["precision_at_k"]["100"] - got["precision_at_k"]["500"]) > 0.01
  # topk <= 0 is the whole database; topk = 1 is MAP@1.
  whole_map = retrieval_reference.mean_average_precision(query_codes, db_codes, query_labels,
                                                         db_labels)
  assert abs(whole_map - got["map"]) > 0.01
  for no_topk in (0, -1):
    whole = evaluate.score(codes, no_topk)
    assert whole["topk"] is None
    np.testing.assert_allclose(whole["map"], whole_map, rtol=1e-12)
  first = evaluate.score(codes, 1)
  assert first["topk"] == 1
  np.testing.assert_allclose(first["map"], ranked_rel[:, 0].mean(), rtol=1e-12)


def test_a_database_under_100_items_is_scored_without_precision_at_k():
  rng = np.random.default_rng(2)
  codes = {"query_codes": np.where(rng.normal(size=(5, 8)) >= 0, 1, -1).astype(np.int8),
           "database_codes": np.where(rng.normal(size=(51, 8)) >= 0, 1, -1).astype(np.int8),
           "query_labels": rng.integers(0, 3, 5), "database_labels": rng.integers(0, 3, 51)}
  got = evaluate.score(codes, -1)
  assert got["precision_at_k"] == {}
  np.testing.assert_allclose(got["map"], retrieval_reference.mean_average_precision(
      codes["query_codes"], codes["database_codes"], codes["query_labels"],
      codes["database_labels"]), rtol=1e-12)


def test_results_and_codes_are_written_whole_and_read_back(tmp_path):
  payload = {"map": 0.5, "bits": 16, "precision_at_k": {"100": 0.25}}
  evaluate.write_json(str(tmp_path / "results.json"), payload)
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == payload
  rng = np.random.default_rng(2)
  codes = {"query_codes": np.where(rng.normal(size=(5, 16)) >= 0, 1, -1).astype(np.int8),
           "database_codes": np.where(rng.normal(size=(40, 16)) >= 0, 1, -1).astype(np.int8),
           "query_labels": rng.integers(0, 3, 5), "database_labels": rng.integers(0, 3, 40),
           "query_ids": np.arange(5, dtype=np.int64) + 100,
           "database_ids": np.arange(40, dtype=np.int64) * 2}
  evaluate.write_codes(str(tmp_path / "codes.npz"), codes)
  assert sorted(os.listdir(tmp_path)) == ["codes.npz", evaluate.INDEX_NAME, "results.json"]
  with np.load(tmp_path / "codes.npz") as saved:
    assert sorted(saved.files) == sorted(codes)
    for name, value in codes.items():
      np.testing.assert_array_equal(saved[name], value)
  database = index.HammingIndex.load(str(tmp_path / evaluate.INDEX_NAME))
  _, ids = database.search(codes["database_codes"][:3], 1)
  np.testing.assert_array_equal(np.asarray(ids)[:, 0], codes["database_ids"][:3])


def test_codes_of_a_length_the_index_refuses_write_nothing(tmp_path):
  codes = {"query_codes": np.ones((2, 12), np.int8), "database_codes": np.ones((4, 12), np.int8),
           "query_labels": np.zeros(2), "database_labels": np.zeros(4),
           "query_ids": np.arange(2), "database_ids": np.arange(4)}
  with pytest.raises(errors.UserError, match="12"):
    evaluate.write_codes(str(tmp_path / "codes.npz"), codes)
  assert os.listdir(tmp_path) == []
