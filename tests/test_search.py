"""`python -m ucsh_jax.search` and its Searcher on tiny trained runs (digits, an image folder,
a feature file): against faiss, by JPEG with paths, clean errors, --database cached."""

import json
import os
import shutil
import subprocess
import sys

import faiss
import numpy as np
import PIL.Image
import pytest

import tiny_runs
from ucsh_jax import errors
from ucsh_jax import inference
from ucsh_jax import run_record
from ucsh_jax import search
from ucsh_jax import searcher as searcher_lib
from ucsh_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search_cli(*args):
  return subprocess.run([sys.executable, "-m", "ucsh_jax.search", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  tiny_runs.digits_run(str(root / "digits"))
  tiny_runs.image_folder_run(str(root / "images"), str(root / "folder"))
  return root


@pytest.fixture(scope="module")
def digits_searcher(runs):
  return searcher_lib.Searcher.from_workdir(str(runs / "digits"))


def _hamming(a_QxK, b_NxK):
  return (a_QxK.shape[1] - a_QxK.astype(np.int32) @ b_NxK.astype(np.int32).T) // 2


def test_query_index_json_matches_faiss_on_the_runs_codes(runs):
  result = _search_cli(f"--workdir={runs / 'digits'}", "--query_index=0", "--json")
  assert result.returncode == 0, result.stderr[-3000:]
  (answer,) = json.loads(result.stdout)
  codes = np.load(runs / "digits" / "codes.npz")
  assert answer["query"]["id"] == int(codes["query_ids"][0])
  hits = answer["results"]
  assert len(hits) == 10

  packed_db = np.packbits(codes["database_codes"] > 0, axis=1)
  flat = faiss.IndexBinaryFlat(codes["database_codes"].shape[1])
  flat.add(packed_db)
  faiss_distances, faiss_rows = flat.search(np.packbits(codes["query_codes"][:1] > 0, axis=1), 10)
  assert [h["distance"] for h in hits] == faiss_distances[0].tolist()
  # Ids are data set positions; below the 10th distance (no ties at the cut) they are faiss's.
  kth = faiss_distances[0, -1]
  database_ids = codes["database_ids"]
  assert ({h["id"] for h in hits if h["distance"] < kth}
          == {int(database_ids[r]) for r, d in zip(faiss_rows[0], faiss_distances[0]) if d < kth})
  # Ranked by (distance, id), each distance right, each label the data set's.
  assert [(h["distance"], h["id"]) for h in hits] == sorted((h["distance"], h["id"]) for h in hits)
  position = {int(i): p for p, i in enumerate(database_ids)}
  exact = _hamming(codes["query_codes"][:1], codes["database_codes"])[0]
  for hit in hits:
    assert hit["distance"] == exact[position[hit["id"]]]
    assert hit["label"] == int(codes["database_labels"][position[hit["id"]]])
    assert hit["path"] is None  # The digits have no files.


def test_jpeg_query_answers_with_paths_and_a_non_image_is_one_error_line(runs, tmp_path):
  jpeg = runs / "images" / "red" / "0.jpg"
  result = _search_cli(f"--workdir={runs / 'folder'}", f"--query={jpeg}", "--topk=3")
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0] == f"query: {jpeg}"
  assert len(lines) == 2 + 3
  for line in lines[2:]:
    path = line.split()[-1]
    assert path.startswith(str(runs / "images")) and os.path.isfile(path)

  not_image = tmp_path / "notes.jpg"
  not_image.write_text("these are words, not pixels\n")
  result = _search_cli(f"--workdir={runs / 'folder'}", f"--query={not_image}")
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.splitlines() == [
      f"error: {not_image} is not a readable image: its bytes are in no image format that can "
      "be read (JPEG, PNG, GIF, TIFF...)"]


def test_encoding_reproduces_the_runs_codes_and_compiles_once(runs, digits_searcher):
  codes = np.load(runs / "digits" / "codes.npz")
  source = digits_searcher.run.source
  ids = codes["query_ids"][:11]
  encoded = digits_searcher.encode_images([source[int(i)]["image"] for i in ids])
  np.testing.assert_array_equal(encoded, codes["query_codes"][:11])
  with tiny_runs.traces() as traced:  # 1 and 3 images: padded to the same compiled batch.
    one = digits_searcher.encode_images([source[int(ids[0])]["image"]])
    three = digits_searcher.encode_images([source[int(i)]["image"] for i in ids[:3]])
  assert traced == []
  np.testing.assert_array_equal(one, codes["query_codes"][:1])
  np.testing.assert_array_equal(three, codes["query_codes"][:3])


def test_query_from_a_larger_image_is_resized_like_the_pipeline(digits_searcher):
  """A 64x64 upscaled digit is a valid query; its top result carries the data set's label."""
  source = digits_searcher.run.source
  query = int(digits_searcher.run.splits.query[0])
  big = np.asarray(PIL.Image.fromarray(source[query]["image"]).resize((64, 64)))
  (hits,) = digits_searcher.search(digits_searcher.encode_images([big]), k=5)
  assert len(hits) == 5
  assert all(hit["label"] == int(source.labels[hit["id"]]) for hit in hits)


def test_folder_query_and_database_folder_encoded_once_and_cached(runs, tmp_path, monkeypatch):
  photos = tmp_path / "photos"
  shutil.copytree(runs / "images" / "green", photos / "green")
  shutil.copy(runs / "images" / "red" / "1.jpg", photos / "a_red.jpg")
  calls = []
  outputs_for = inference.outputs_for
  monkeypatch.setattr(inference, "outputs_for",
                      lambda *a, **k: calls.append(len(a[3])) or outputs_for(*a, **k))
  workdir = str(runs / "folder")
  found = search.answers(searcher_lib.Searcher.from_workdir(workdir, database=str(photos)),
                         str(runs / "images" / "red"), None, 4)
  assert len(found) == 36 and calls == [37]  # Every photo encoded in one pass.
  assert found[0]["query"]["path"] == str(runs / "images" / "red" / "0.jpg")
  for answer in found:
    assert all(hit["path"].startswith(str(photos)) and hit["label"] is None
               for hit in answer["results"])
  cached = os.listdir(os.path.join(workdir, searcher_lib.CACHE_DIR))
  assert len(cached) == 1 and cached[0].startswith("photos-")

  again = search.answers(searcher_lib.Searcher.from_workdir(workdir, database=str(photos)),
                         str(runs / "images" / "red"), None, 4)
  assert again == found and calls == [37]  # Read from the cache.
  shutil.copy(runs / "images" / "blue" / "2.jpg", photos / "b_blue.jpg")
  searcher_lib.Searcher.from_workdir(workdir, database=str(photos))
  assert calls == [37, 38]  # A changed folder is encoded again.
  assert len(os.listdir(os.path.join(workdir, searcher_lib.CACHE_DIR))) == 2


def test_user_mistakes_are_user_errors(runs, digits_searcher, tmp_path):
  with pytest.raises(errors.UserError, match="does not exist"):
    searcher_lib.Searcher.from_workdir(str(tmp_path / "nowhere"))
  with pytest.raises(errors.UserError, match="query index 40 is outside the run's 40 queries"):
    search.answers(digits_searcher, None, 40, 10)
  with pytest.raises(errors.UserError, match="exactly one of"):
    search.answers(digits_searcher, str(tmp_path), 0, 10)
  with pytest.raises(errors.UserError, match="topk must be at least 1"):
    search.answers(digits_searcher, None, 0, 0)
  with pytest.raises(errors.UserError, match="no images"):
    search.answers(digits_searcher, str(tmp_path), None, 10)
  np.savez(tmp_path / "f.npz", features=np.zeros((2, 64), np.float32))
  with pytest.raises(errors.UserError, match="hashes images, not feature vectors"):
    search.answers(digits_searcher, str(tmp_path / "f.npz"), None, 10)
  unencoded = tmp_path / "unencoded"
  shutil.copytree(runs / "digits", unencoded)
  os.remove(unencoded / "database.index")
  with pytest.raises(errors.UserError, match="no database index") as info:
    searcher_lib.Searcher.from_workdir(str(unencoded))
  assert "--mode=encode" in info.value.hint


def test_features_run_takes_npz_queries_of_its_width_only(tmp_path):
  workdir, features, labels = tiny_runs.features_run(str(tmp_path))
  searcher = searcher_lib.Searcher.from_workdir(workdir)

  np.savez(tmp_path / "queries.npz", features=features[:3], labels=labels[:3])
  found = search.answers(searcher, str(tmp_path / "queries.npz"), None, 5)
  assert [a["query"]["id"] for a in found] == [0, 1, 2]
  assert found[1]["query"]["label"] == np.flatnonzero(labels[1]).tolist()
  for hit in found[0]["results"]:
    assert hit["label"] == np.flatnonzero(labels[hit["id"]]).tolist() and hit["path"] is None
  np.savez(tmp_path / "narrow.npz", features=features[:3, :11])
  with pytest.raises(errors.UserError, match=r"shape \(3, 11\); this run hashes vectors of "
                                             r"width 12"):
    search.answers(searcher, str(tmp_path / "narrow.npz"), None, 5)
  PIL.Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
  with pytest.raises(errors.UserError, match="hashes feature vectors of width 12"):
    search.answers(searcher, str(tmp_path / "photo.png"), None, 5)
  features[2, 3] = np.nan
  np.savez(tmp_path / "nan.npz", features=features[:3])
  with pytest.raises(errors.UserError, match="row 2 of 'features' is not finite"):
    search.answers(searcher, str(tmp_path / "nan.npz"), None, 5)


def test_a_database_cached_before_a_new_checkpoint_is_encoded_again(tmp_path, monkeypatch):
  workdir, features, labels = tiny_runs.features_run(str(tmp_path))
  np.savez(tmp_path / "collection.npz", features=features[:30], labels=labels[:30])
  collection = str(tmp_path / "collection.npz")
  calls = []
  outputs_for = inference.outputs_for
  monkeypatch.setattr(inference, "outputs_for",
                      lambda *a, **k: calls.append(len(a[3])) or outputs_for(*a, **k))
  before = searcher_lib.Searcher.from_workdir(workdir, database=collection)
  assert calls == [30]
  old_codes = before._encode(features[:30])
  config = run_record.load_config(workdir)
  config.num_epochs += 1  # Train further: a new checkpoint (fast, so that the codes move).
  config.optimizer.learning_rate *= 100
  train.train_and_evaluate(config, workdir)

  calls.clear()
  after = searcher_lib.Searcher.from_workdir(workdir, database=collection)
  assert calls == [30]  # Encoded again with the new checkpoint, not read from the cache.
  assert len(os.listdir(os.path.join(workdir, searcher_lib.CACHE_DIR))) == 2
  new_codes = after._encode(features[:30])
  assert (new_codes != old_codes).any()  # The new checkpoint encodes differently.
  # Each item of the collection is found at distance 0 from the new codes of its own features.
  found = search.answers(after, collection, None, 30)
  for i, answer in enumerate(found):
    assert {hit["id"]: hit["distance"] for hit in answer["results"]}[i] == 0
