"""The evaluation path: the codes it scores are the model's sign, and `evaluate.score` equals
NumPy's MAP@topk, precision@k at each cut-off and precision within Hamming radius 2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import features as features_config
import retrieval_reference
from ucsh_jax import evaluate
from ucsh_jax import experiment
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


def test_score_equals_numpy_at_every_cut_off():
  rng = np.random.default_rng(1)
  num_query, num_db, classes = 30, 600, 4
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

  # The cut-offs past the database's size (1000, 5000) are left out.
  assert sorted(got["precision_at_k"], key=int) == ["100", "500"]
  for k, value in got["precision_at_k"].items():
    np.testing.assert_allclose(value, ranked_rel[:, :int(k)].mean(), rtol=1e-12, err_msg=k)
  np.testing.assert_allclose(got["map"], retrieval_reference.mean_average_precision(
      query_codes, db_codes, query_labels, db_labels, topk), rtol=1e-12)
  np.testing.assert_allclose(got["precision_within_radius_2"], radius_precision.mean(),
                             rtol=1e-12)
  assert got["topk"] == topk
  # The precisions differ from cut-off to cut-off, so a wrong k would show.
  assert abs(got["precision_at_k"]["100"] - got["precision_at_k"]["500"]) > 0.01
  # topk <= 0 is the whole database.
  whole = evaluate.score(codes, -1)
  assert whole["topk"] is None
  np.testing.assert_allclose(whole["map"], retrieval_reference.mean_average_precision(
      query_codes, db_codes, query_labels, db_labels), rtol=1e-12)
  assert abs(whole["map"] - got["map"]) > 0.01
