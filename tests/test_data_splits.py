"""Protocol splits: sizes, disjointness, stratification, reuse from the workdir, feature files."""

import os

import ml_collections
import numpy as np
import pytest

from ucsh_jax import data
from ucsh_jax.data import features


def data_config(**fields):
  base = dict(name="features", path="", num_query=10, num_train=15, num_database=-1)
  return ml_collections.ConfigDict({**base, **fields})


def feature_file(tmp_path, labels, name="features.npz", **extra):
  path = str(tmp_path / name)
  rng = np.random.default_rng(0)
  np.savez(path, features=rng.normal(size=(len(labels), 4)), labels=labels, **extra)
  return path


def single_label(n=100, classes=5, seed=0):
  return np.random.default_rng(seed).integers(0, classes, n)


def assert_protocol(splits, n):
  query, database, train = splits
  for idx in splits:
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # Sorted, unique.
    assert idx.min() >= 0 and idx.max() < n
  assert np.intersect1d(query, database).size == 0
  assert np.isin(train, database).all()


def test_single_label_is_stratified_and_complete(tmp_path):
  labels = single_label()
  source = features.FeatureSource(feature_file(tmp_path, labels))
  splits = data.make_splits(data_config(), source, seed=0, workdir=None)
  assert_protocol(splits, len(labels))
  assert len(splits.query) == 10 and len(splits.train) == 15
  np.testing.assert_array_equal(np.bincount(labels[splits.query], minlength=5), np.full(5, 2))
  np.testing.assert_array_equal(np.bincount(labels[splits.train], minlength=5), np.full(5, 3))
  np.testing.assert_array_equal(np.union1d(splits.query, splits.database), np.arange(len(labels)))


def test_uneven_query_spreads_the_remainder_over_the_first_classes(tmp_path):
  labels = single_label()
  source = features.FeatureSource(feature_file(tmp_path, labels))
  splits = data.make_splits(data_config(num_query=12), source, seed=0, workdir=None)
  counts = np.bincount(labels[splits.query], minlength=5)
  assert counts.sum() == 12 and counts.max() - counts.min() == 1
  assert list(counts) == sorted(counts, reverse=True)


def test_multi_label_drops_unlabelled_and_subsets_the_database(tmp_path):
  rng = np.random.default_rng(1)
  labels = (rng.random((80, 6)) < 0.15).astype(np.int32)
  unlabelled = np.flatnonzero(labels.sum(1) == 0)
  assert unlabelled.size  # The test needs some.
  source = features.FeatureSource(feature_file(tmp_path, labels))
  splits = data.make_splits(data_config(num_database=30), source, seed=2, workdir=None)
  assert_protocol(splits, len(labels))
  assert (len(splits.query), len(splits.database), len(splits.train)) == (10, 30, 15)
  assert np.intersect1d(np.concatenate(splits), unlabelled).size == 0


def test_deterministic_from_the_seed(tmp_path):
  source = features.FeatureSource(feature_file(tmp_path, single_label()))
  a, b, c = (data.make_splits(data_config(), source, seed=s, workdir=None) for s in (4, 4, 5))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.query, c.query)


def test_saved_splits_are_reused_and_checked_against_the_dataset_size(tmp_path):
  labels = single_label()
  source = features.FeatureSource(feature_file(tmp_path, labels))
  workdir = str(tmp_path / "work")
  first = data.make_splits(data_config(), source, seed=0, workdir=workdir)
  for name, idx in zip(("query", "database", "train"), first):
    np.testing.assert_array_equal(np.load(os.path.join(workdir, "splits", f"{name}.npy")), idx)
  # With the sizes and seed they were drawn with, the files are read (not drawn again).
  other = data.make_splits(data_config(), source, seed=9, workdir=None)
  for name, idx in zip(("query", "database", "train"), other):
    np.save(os.path.join(workdir, "splits", f"{name}.npy"), idx)
  again = data.make_splits(data_config(), source, seed=0, workdir=workdir)
  for x, y in zip(other, again):
    np.testing.assert_array_equal(x, y)
  # Other sizes or another seed (only without a run record: a refused start's leftovers) draw
  # them again, and save those.
  redrawn = data.make_splits(data_config(num_query=20), source, seed=9, workdir=workdir)
  expected = data.make_splits(data_config(num_query=20), source, seed=9, workdir=None)
  for name, x, y in zip(("query", "database", "train"), redrawn, expected):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(np.load(os.path.join(workdir, "splits", f"{name}.npy")), y)
  smaller = features.FeatureSource(feature_file(tmp_path, labels[:90], name="small.npz"))
  with pytest.raises(ValueError, match="100 examples but this one has 90"):
    data.make_splits(data_config(), smaller, seed=0, workdir=workdir)


def test_feature_file_splits_are_used(tmp_path):
  labels = single_label(60)
  query, database = np.arange(0, 60, 6), np.setdiff1d(np.arange(60), np.arange(0, 60, 6))
  train = database[::3]
  path = feature_file(tmp_path, labels, query_idx=query, database_idx=database, train_idx=train)
  source = data.get_source(ml_collections.ConfigDict(dict(name="features", path=path)))
  splits = data.make_splits(data_config(num_query=3), source, seed=0, workdir=None)
  for got, want in zip(splits, (query, database, train)):
    np.testing.assert_array_equal(got, want)
  # A train set drawn when the file carries only query and database.
  partial = feature_file(tmp_path, labels, name="partial.npz", query_idx=query,
                         database_idx=database)
  splits = data.make_splits(data_config(num_train=10), features.FeatureSource(partial), seed=0,
                            workdir=None)
  np.testing.assert_array_equal(splits.query, query)
  assert len(splits.train) == 10 and np.isin(splits.train, database).all()


def test_bad_splits_are_errors(tmp_path):
  labels = single_label(30)
  source = features.FeatureSource(feature_file(tmp_path, labels))
  with pytest.raises(ValueError, match="asked for 40 but only 30"):
    data.make_splits(data_config(num_query=40), source, seed=0, workdir=None)
  overlapping = feature_file(tmp_path, labels, name="bad.npz", query_idx=np.arange(5),
                             database_idx=np.arange(3, 30))
  with pytest.raises(ValueError, match="query and database share 2"):
    data.make_splits(data_config(), features.FeatureSource(overlapping), seed=0, workdir=None)
