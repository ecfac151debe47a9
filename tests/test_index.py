"""Tests of ucsh_jax.index against a NumPy brute force (full distance matrix + lexsort)."""

import os

import faiss
import numpy as np
import pytest

from ucsh_jax import errors
from ucsh_jax import evaluate
from ucsh_jax import index as index_lib


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
  """faiss's OpenMP threads spin on a busy machine; one thread keeps these small cases fast."""
  threads = faiss.omp_get_max_threads()
  faiss.omp_set_num_threads(1)
  yield
  faiss.omp_set_num_threads(threads)


def _codes(n, bits, rng, num_centers=4, flip=0.1):
  """+-1 int8 codes around a few centers: many exact ties in distance."""
  centers = np.where(rng.uniform(size=(num_centers, bits)) < 0.5, -1, 1)
  flips = np.where(rng.uniform(size=(n, bits)) < flip, -1, 1)
  return (centers[rng.integers(0, num_centers, n)] * flips).astype(np.int8)


def _brute_distances(query_codes, db_codes):
  bits = query_codes.shape[1]
  return (bits - query_codes.astype(np.int64) @ db_codes.T.astype(np.int64)) // 2


def _brute_top_k(query_codes, db_codes, ids, k):
  dist = _brute_distances(query_codes, db_codes)
  order = np.stack([np.lexsort((ids, row))[:k] for row in dist])
  return np.take_along_axis(dist, order, axis=1), ids[order]


def _index_in_parts(db_codes, ids, parts=3):
  """Built by several add() calls, ids not in order."""
  index = index_lib.HammingIndex(db_codes.shape[1])
  for codes, part_ids in zip(np.array_split(db_codes, parts), np.array_split(ids, parts)):
    index.add(codes, part_ids)
  return index


@pytest.mark.parametrize("bits,n,k", [(8, 700, 50), (24, 2000, 30), (64, 3000, 100),
                                      (64, 500, 500), (128, 1500, 7), (256, 900, 40)])
def test_search_matches_brute_force(bits, n, k, monkeypatch):
  # Small chunks and query blocks so that every path of the chunked scan runs.
  monkeypatch.setattr(index_lib, "_BLOCK_SIZE", 16 * 128)
  monkeypatch.setattr(index_lib, "_QUERY_BLOCK", 16)
  rng = np.random.default_rng(bits + n)
  db_codes, query_codes = _codes(n, bits, rng), _codes(45, bits, rng)
  ids = rng.choice(10 * n, n, replace=False)
  index = _index_in_parts(db_codes, ids)
  assert index.ntotal == n and index.bits == bits
  distances, found = index.search(query_codes, k)
  ref_distances, ref_ids = _brute_top_k(query_codes, db_codes, ids, k)
  assert distances.dtype == np.int32 and found.dtype == np.int64
  np.testing.assert_array_equal(distances, ref_distances)
  np.testing.assert_array_equal(found, ref_ids)


def test_default_ids_are_running_positions():
  rng = np.random.default_rng(0)
  db_codes, query_codes = _codes(300, 16, rng), _codes(10, 16, rng)
  index = index_lib.HammingIndex.from_codes(db_codes[:100])
  index.add(db_codes[100:])
  np.testing.assert_array_equal(index.ids, np.arange(300))
  _, found = index.search(query_codes, 20)
  np.testing.assert_array_equal(found, _brute_top_k(query_codes, db_codes, np.arange(300), 20)[1])


def test_k_beyond_ntotal_pads_with_minus_one():
  rng = np.random.default_rng(1)
  db_codes, query_codes = _codes(5, 16, rng), _codes(3, 16, rng)
  ids = np.array([40, 10, 30, 20, 50])
  distances, found = index_lib.HammingIndex.from_codes(db_codes, ids).search(query_codes, 8)
  ref_distances, ref_ids = _brute_top_k(query_codes, db_codes, ids, 5)
  np.testing.assert_array_equal(distances[:, :5], ref_distances)
  np.testing.assert_array_equal(found[:, :5], ref_ids)
  assert np.all(distances[:, 5:] == -1) and np.all(found[:, 5:] == -1)
  distances, found = index_lib.HammingIndex(16).search(query_codes, 2)
  assert np.all(distances == -1) and np.all(found == -1) and distances.shape == (3, 2)


def test_empty_index_and_no_queries():
  empty, index = index_lib.HammingIndex(16), index_lib.HammingIndex.from_codes(np.ones((5, 16)))
  lims, distances, found = empty.range_search(np.ones((2, 16)), 3)
  assert lims.tolist() == [0, 0, 0] and len(distances) == len(found) == 0
  lims, distances, found = index.range_search(np.ones((0, 16)), 3)
  assert lims.tolist() == [0] and len(distances) == len(found) == 0
  distances, found = index.search(np.ones((0, 16)), 3)
  assert distances.shape == found.shape == (0, 3)


@pytest.mark.parametrize("radius", [0, 3, 9])
def test_range_search_matches_brute_force(radius, monkeypatch):
  monkeypatch.setattr(index_lib, "_BLOCK_SIZE", 8 * 100)
  monkeypatch.setattr(index_lib, "_QUERY_BLOCK", 8)
  rng = np.random.default_rng(radius)
  db_codes = _codes(1000, 32, rng)
  # Queries near database items, so that every radius has items at exactly that distance.
  query_codes = db_codes[:20] * np.where(rng.uniform(size=(20, 32)) < 0.05, -1, 1)
  ids = rng.choice(5000, 1000, replace=False)
  lims, distances, found = _index_in_parts(db_codes, ids).range_search(query_codes, radius)
  dist = _brute_distances(query_codes, db_codes)
  assert np.any(dist == radius)
  assert lims.shape == (21,) and lims[0] == 0
  for q, row in enumerate(dist):
    inside = np.flatnonzero(row <= radius)
    order = inside[np.lexsort((ids[inside], row[inside]))]
    np.testing.assert_array_equal(distances[lims[q]:lims[q + 1]], row[order])
    np.testing.assert_array_equal(found[lims[q]:lims[q + 1]], ids[order])
  assert lims[-1] == np.count_nonzero(dist <= radius)


def test_save_load_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  db_codes, query_codes = _codes(400, 48, rng), _codes(9, 48, rng)
  index = _index_in_parts(db_codes, rng.choice(1000, 400, replace=False))
  path = str(tmp_path / "db.index")
  index.save(path)
  loaded = index_lib.HammingIndex.load(path, bits=48)
  assert loaded.bits == 48 and loaded.ntotal == 400
  np.testing.assert_array_equal(loaded.packed, index.packed)
  np.testing.assert_array_equal(loaded.ids, index.ids)
  for got, want in zip(loaded.search(query_codes, 12), index.search(query_codes, 12)):
    np.testing.assert_array_equal(got, want)
  loaded.add(_codes(3, 48, rng), [2000, 2001, 2002])  # A loaded index is writable.
  assert loaded.ntotal == 403


def _saved(tmp_path, bits=16, n=50):
  path = str(tmp_path / "db.index")
  index_lib.HammingIndex.from_codes(_codes(n, bits, np.random.default_rng(3))).save(path)
  with open(path, "rb") as f:
    return path, bytearray(f.read())


def _rewrite(path, data):
  with open(path, "wb") as f:
    f.write(bytes(data))


def test_load_wrong_version(tmp_path):
  path, data = _saved(tmp_path)
  data[8:12] = (index_lib.VERSION + 1).to_bytes(4, "little")
  _rewrite(path, data)
  with pytest.raises(errors.UserError, match=r"format version 2; .* reads version 1"):
    index_lib.HammingIndex.load(path)


def test_load_wrong_bits(tmp_path):
  path, _ = _saved(tmp_path, bits=16)
  with pytest.raises(errors.UserError, match="holds 16-bit codes, expected 64-bit"):
    index_lib.HammingIndex.load(path, bits=64)


@pytest.mark.parametrize("keep", [10, -40, -1])
def test_load_truncated(tmp_path, keep):
  path, data = _saved(tmp_path)
  _rewrite(path, data[:keep])
  with pytest.raises(errors.UserError, match="is truncated"):
    index_lib.HammingIndex.load(path)


def test_load_truncated_names_the_sizes(tmp_path):
  path, data = _saved(tmp_path)
  _rewrite(path, data[:-3])
  with pytest.raises(errors.UserError, match=r"truncated: \d+ bytes where the header"):
    index_lib.HammingIndex.load(path)


def test_load_garbage(tmp_path):
  path = str(tmp_path / "db.index")
  _rewrite(path, np.random.default_rng(4).integers(0, 256, 500, dtype=np.uint8))
  with pytest.raises(errors.UserError, match="not a Hamming index file"):
    index_lib.HammingIndex.load(path)


def test_load_corrupt_payload(tmp_path):
  path, data = _saved(tmp_path)
  data[-20] ^= 0x10
  _rewrite(path, data)
  with pytest.raises(errors.UserError, match="corrupt: checksum mismatch"):
    index_lib.HammingIndex.load(path)


def test_load_trailing_data(tmp_path):
  path, data = _saved(tmp_path)
  _rewrite(path, data + b"\0" * 8)
  with pytest.raises(errors.UserError, match="corrupt .trailing data"):
    index_lib.HammingIndex.load(path)


def test_load_missing_file(tmp_path):
  with pytest.raises(errors.UserError, match="cannot read the Hamming index"):
    index_lib.HammingIndex.load(str(tmp_path / "nothing.index"))


@pytest.mark.parametrize("bits", [0, 12, 63, -8])
def test_code_length_not_a_multiple_of_8_is_refused(bits):
  with pytest.raises(errors.UserError, match="multiple of 8 bits"):
    index_lib.HammingIndex(bits)
  if bits > 0:
    with pytest.raises(errors.UserError, match="multiple of 8 bits"):
      index_lib.HammingIndex.from_codes(np.ones((3, bits), np.int8))


def test_bad_inputs_are_named():
  index = index_lib.HammingIndex.from_codes(np.ones((4, 16), np.int8))
  with pytest.raises(errors.UserError, match=r"query_codes must be \(n, 16\)"):
    index.search(np.ones((2, 32)), 3)
  with pytest.raises(errors.UserError, match=r"only \+1 and -1"):
    index.search(np.zeros((2, 16)), 3)
  with pytest.raises(errors.UserError, match="k must be a positive integer"):
    index.search(np.ones((2, 16)), 0)
  with pytest.raises(errors.UserError, match="distinct, 2 is given twice"):
    index.add(np.ones((1, 16)), [2])
  with pytest.raises(errors.UserError, match="non-negative"):
    index.add(np.ones((1, 16)), [-5])
  with pytest.raises(errors.UserError, match=r"packed must be \(n, 2\) uint8"):
    index.add_packed(np.ones((1, 3), np.uint8))
  assert index.ntotal == 4  # Refused additions leave the index as it was.


def test_from_packed_equals_from_codes():
  rng = np.random.default_rng(5)
  db_codes, query_codes = _codes(300, 32, rng), _codes(7, 32, rng)
  packed = np.packbits(db_codes > 0, axis=1)
  a = index_lib.HammingIndex.from_packed(packed, 32, ids=np.arange(300) * 3)
  b = index_lib.HammingIndex.from_codes(db_codes, ids=np.arange(300) * 3)
  for got, want in zip(a.search(query_codes, 10), b.search(query_codes, 10)):
    np.testing.assert_array_equal(got, want)


def test_flat_faiss_export_differs_only_within_ties():
  rng = np.random.default_rng(6)
  db_codes, query_codes = _codes(3000, 64, rng), _codes(50, 64, rng)
  ids = rng.choice(100_000, 3000, replace=False)
  index = _index_in_parts(db_codes, ids)
  distances, found = index.search(query_codes, 25)
  packed_queries = np.packbits(query_codes > 0, axis=1)
  faiss_distances, faiss_ids = index.to_faiss("flat").search(packed_queries, 25)
  np.testing.assert_array_equal(faiss_distances, distances)
  row_of = dict(zip(ids.tolist(), range(len(ids))))
  dist = _brute_distances(query_codes, db_codes)
  for q in range(len(query_codes)):
    # faiss's ids are at the distances it reports; below the k-th distance it finds the same set.
    rows = [row_of[i] for i in faiss_ids[q]]
    np.testing.assert_array_equal(dist[q, rows], faiss_distances[q])
    below = distances[q] < distances[q, -1]
    assert set(faiss_ids[q][below]) == set(found[q][below])
  # The k-th distance splits ties in most rows, so the check above does look at ties.
  kth = distances[:, -1:]
  cut = np.count_nonzero(dist == kth, axis=1) > np.count_nonzero(distances == kth, axis=1)
  assert np.mean(cut) > 0.5


def _recall(index, faiss_index, query_codes, db_codes, ids, k):
  """Fraction of the exact top-k distances the approximate index matches, rank by rank.

  A rank counts as found when its distance is the exact one (ids may differ within ties);
  the distance faiss reports must be the true distance of the id it returns.
  """
  exact, _ = index.search(query_codes, k)
  approx, approx_ids = faiss_index.search(np.packbits(query_codes > 0, axis=1), k)
  row_of = dict(zip(ids.tolist(), range(len(ids))))
  dist = _brute_distances(query_codes, db_codes)
  for q, (row_ids, row_dist) in enumerate(zip(approx_ids, approx)):
    returned = row_ids >= 0
    rows = [row_of[i] for i in row_ids[returned]]
    np.testing.assert_array_equal(dist[q, rows], row_dist[returned])
  approx = np.where(approx < 0, np.iinfo(np.int32).max, approx)
  return float(np.mean(approx <= exact))


@pytest.mark.parametrize("kind,params,floor", [("hash", {"b": 8, "nflip": 3}, 0.5),
                                                ("ivf", {}, 0.8),
                                                ("ivf", {"nlist": 8, "nprobe": 8}, 1.0)])
def test_approximate_faiss_exports_recall(kind, params, floor):
  rng = np.random.default_rng(7)
  db_codes, query_codes = _codes(4000, 64, rng, num_centers=20), _codes(100, 64, rng, 20)
  ids = rng.choice(10**6, 4000, replace=False)
  index = _index_in_parts(db_codes, ids)
  faiss_index = index.to_faiss(kind, **params)
  assert faiss_index.ntotal == 4000
  recall = _recall(index, faiss_index, query_codes, db_codes, ids, 10)
  print(f"faiss {kind} {params}: recall@10 {recall:.3f}")
  assert recall >= floor


def test_to_faiss_refuses_unknown_kinds_and_parameters():
  index = index_lib.HammingIndex.from_codes(np.ones((4, 16), np.int8))
  with pytest.raises(errors.UserError, match="unknown faiss index kind 'lsh'"):
    index.to_faiss("lsh")
  with pytest.raises(errors.UserError, match=r"unknown parameters .*\['nprobes'\]"):
    index.to_faiss("ivf", nprobes=3)


def test_write_codes_writes_the_database_index(tmp_path):
  rng = np.random.default_rng(8)
  codes = {"query_codes": _codes(5, 16, rng), "database_codes": _codes(30, 16, rng),
           "query_labels": np.zeros(5), "database_labels": np.zeros(30),
           "query_ids": np.arange(5) * 7, "database_ids": np.arange(30) * 7 + 1}
  evaluate.write_codes(str(tmp_path / "codes.npz"), codes)
  index = index_lib.HammingIndex.load(str(tmp_path / evaluate.INDEX_NAME), bits=16)
  np.testing.assert_array_equal(index.ids, codes["database_ids"])
  np.testing.assert_array_equal(index.packed, np.packbits(codes["database_codes"] > 0, axis=1))
  assert sorted(os.listdir(tmp_path)) == ["codes.npz", evaluate.INDEX_NAME]
