"""Tests of ucsh_jax.metrics against per-query NumPy references (stable argsort)."""

import jax.numpy as jnp
import numpy as np
import pytest

import retrieval_reference as reference
from ucsh_jax import metrics


def _data(num_bits, multi_label, seed=0, num_queries=37, num_db=300, num_classes=5):
  rng = np.random.default_rng(seed)
  centers = np.where(rng.normal(size=(num_classes, num_bits)) >= 0, 1, -1)

  def draw(n):
    if multi_label:
      labels = (rng.uniform(size=(n, num_classes)) < 0.3).astype(np.int32)
      first = np.argmax(labels, axis=1)  # Rows without labels keep a random center.
    else:
      labels = rng.integers(0, num_classes, n)
      first = labels
    flips = np.where(rng.uniform(size=(n, num_bits)) < 0.3, -1, 1)
    return (centers[first] * flips).astype(np.float32), labels

  query_codes, query_labels = draw(num_queries)
  db_codes, db_labels = draw(num_db)
  return query_codes, db_codes, query_labels, db_labels


@pytest.mark.parametrize("num_bits, multi_label, topk, num_db", [
    (4, False, None, 300), (4, False, 50, 300), (4, True, 120, 300), (32, False, 60, 300),
    (32, True, None, 300), (70, False, 25, 300), (16, True, 10_000, 300),
    (12, False, 1000, 6000), (12, True, 2500, 6000),
])
def test_map_matches_numpy_reference(num_bits, multi_label, topk, num_db):
  data = _data(num_bits, multi_label, seed=num_bits, num_db=num_db)
  got = metrics.mean_average_precision(*data, topk=topk)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, reference.mean_average_precision(*data, topk), rtol=1e-12)


def test_map_counts_zero_hit_queries_and_accepts_jax_arrays():
  query_codes, db_codes, query_labels, db_labels = _data(8, False, seed=3)
  query_labels[:5] = 99  # No database item shares this label.
  got = metrics.mean_average_precision(jnp.asarray(query_codes), jnp.asarray(db_codes),
                                       jnp.asarray(query_labels), db_labels, 40)
  want = reference.mean_average_precision(query_codes, db_codes, query_labels, db_labels, 40)
  np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("num_bits", [6, 70, 300])
def test_hamming_distance_matches_inner_product(num_bits):
  query_codes, db_codes, _, _ = _data(num_bits, False, seed=1, num_db=50)
  got = metrics.hamming_distance(query_codes.astype(np.int8), db_codes)
  assert np.issubdtype(got.dtype, np.integer)
  np.testing.assert_array_equal(got, reference.hamming(query_codes, db_codes))


def test_hamming_top_k_is_the_stable_ranking():
  query_codes, db_codes, _, _ = _data(5, False, seed=6)
  indices, distances = metrics.hamming_top_k(query_codes, db_codes, 40)
  dist = reference.hamming(query_codes, db_codes)
  want = np.argsort(dist, axis=1, kind="stable")[:, :40]
  np.testing.assert_array_equal(indices, want)
  np.testing.assert_array_equal(distances, np.take_along_axis(dist, want, axis=1))


@pytest.mark.parametrize("multi_label", [False, True])
def test_precision_at_k_matches_numpy(multi_label):
  data = _data(6, multi_label, seed=4)
  ks = [1, 7, 100, 300]
  dist, rel = reference.hamming(*data[:2]), reference.relevance(*data[2:])
  order = np.argsort(dist, axis=1, kind="stable")
  ranked_rel = np.take_along_axis(rel, order, axis=1)
  want = [ranked_rel[:, :k].mean() for k in ks]
  np.testing.assert_allclose(metrics.precision_at_k(*data, ks), want, rtol=1e-12)


@pytest.mark.parametrize("multi_label", [False, True])
def test_precision_recall_curve_and_radius_match_numpy(multi_label):
  data = _data(8, multi_label, seed=5)
  dist, rel = reference.hamming(*data[:2]), reference.relevance(*data[2:])
  precision, recall = metrics.precision_recall_curve(*data)
  assert precision.shape == recall.shape == (9,)
  for radius in range(9):
    retrieved = dist <= radius
    found = (retrieved & rel).sum(1)
    p = np.where(retrieved.sum(1) > 0, found / np.maximum(retrieved.sum(1), 1), 0.0)
    r = np.where(rel.sum(1) > 0, found / np.maximum(rel.sum(1), 1), 0.0)
    np.testing.assert_allclose([precision[radius], recall[radius]], [p.mean(), r.mean()],
                               rtol=1e-12)
  np.testing.assert_allclose(metrics.precision_within_radius(*data), precision[2])
  assert recall[-1] == pytest.approx(np.mean(rel.sum(1) > 0))


@pytest.mark.parametrize("num_bits", [1, 255, 256])
def test_edge_lengths_one_query_and_the_extreme_cut_offs(num_bits):
  """One query, 1-bit codes, 255 and 256 bits (256 = the largest distance of a 256-bit code);
  k = 1 and k = the whole database; MAP@1; a single precision cut-off."""
  query_codes, db_codes, query_labels, db_labels = _data(num_bits, False, seed=7, num_db=40)
  dist = reference.hamming(query_codes, db_codes)
  np.testing.assert_array_equal(metrics.hamming_distance(query_codes[:1], db_codes), dist[:1])
  np.testing.assert_array_equal(metrics.hamming_distance(db_codes, -db_codes).diagonal(),
                                np.full(40, num_bits))
  order = np.argsort(dist, axis=1, kind="stable")
  for k in (1, 40):
    indices, distances = metrics.hamming_top_k(query_codes, db_codes, k)
    np.testing.assert_array_equal(indices, order[:, :k])
    np.testing.assert_array_equal(distances, np.take_along_axis(dist, order[:, :k], axis=1))
  data = (query_codes, db_codes, query_labels, db_labels)
  np.testing.assert_allclose(metrics.mean_average_precision(*data, topk=1),
                             reference.mean_average_precision(*data, topk=1), rtol=1e-12)
  ranked_rel = np.take_along_axis(reference.relevance(query_labels, db_labels), order, axis=1)
  np.testing.assert_allclose(metrics.precision_at_k(*data, [7]), [ranked_rel[:, :7].mean()],
                             rtol=1e-12)


def test_a_query_with_one_relevant_item():
  """Its AP is 1 / the item's rank, its recall 0 until the item's distance, then 1."""
  q = np.array([[1, 1, 1, 1]])
  d = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, -1, -1]])
  query_labels, db_labels = np.array([0]), np.array([1, 0, 1])
  assert metrics.mean_average_precision(q, d, query_labels, db_labels) == 0.5
  precision, recall = metrics.precision_recall_curve(q, d, query_labels, db_labels)
  np.testing.assert_array_equal(recall, [0, 1, 1, 1, 1])
  np.testing.assert_allclose(precision, [0, 0.5, 0.5, 0.5, 1 / 3])
  # Radius 0 and a radius beyond the code length are the curve's ends.
  assert metrics.precision_within_radius(q, d, query_labels, db_labels, radius=0) == 0.0
  assert metrics.precision_within_radius(q, d, query_labels, db_labels,
                                         radius=20) == pytest.approx(1 / 3)


@pytest.mark.parametrize("call, name", [
    (lambda q, d, ql, dl: metrics.mean_average_precision(q * 2, d, ql, dl), "query_codes"),
    (lambda q, d, ql, dl: metrics.mean_average_precision(q, d[:, :3], ql, dl), "db_codes"),
    (lambda q, d, ql, dl: metrics.mean_average_precision(q, d, ql, dl[:-1]), "db_labels"),
    (lambda q, d, ql, dl: metrics.mean_average_precision(q, d, ql[:, None], dl), "query_labels"),
    (lambda q, d, ql, dl: metrics.mean_average_precision(q, d, ql, dl, topk=0), "topk"),
    (lambda q, d, ql, dl: metrics.precision_at_k(q, d, ql, dl, [0, 5]), "ks"),
    (lambda q, d, ql, dl: metrics.hamming_distance(q[0], d), "query_codes"),
    (lambda q, d, ql, dl: metrics.hamming_top_k(q, d, 0), "k must be"),
])
def test_bad_arguments_raise(call, name):
  with pytest.raises(ValueError, match=name):
    call(*_data(8, False))
