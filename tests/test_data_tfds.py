"""tfds builders (CIFAR-10, MIRFLICKR-25K, NUS-WIDE) on small files in the real formats."""

import functools
import glob
import http.server
import io
import logging
import os
import pickle
import shutil
import sys
import tarfile
import threading
import time

import ml_collections
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from ucsh_jax import data
from ucsh_jax import errors
from ucsh_jax.data import cifar10
from ucsh_jax.data import fingerprint
from ucsh_jax.data import mirflickr
from ucsh_jax.data import tfds_builder

CIFAR_BATCHES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


def data_config(**fields):
  base = dict(name="cifar10", path="", manual_dir="", data_dir="", image_size=32, num_query=4,
              num_train=4, num_database=-1, skip_corrupt=False, num_workers=0, top_concepts=10)
  return ml_collections.ConfigDict({**base, **fields})


def add_member(tar, name, payload: bytes):
  info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def make_cifar_archive(path, per_batch=3, seed=0, short_labels=None):
  """Writes the official layout; returns (flat data (N, 3072) uint8, labels (N,)) in batch order."""
  rng = np.random.default_rng(seed)
  flats, labels = [], []
  with tarfile.open(path, "w:gz") as tar:
    for name in CIFAR_BATCHES:
      flat = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
      batch_labels = rng.integers(0, 10, per_batch).tolist()
      stored = batch_labels[:-1] if name == short_labels else batch_labels
      add_member(tar, name, pickle.dumps(
          {b"batch_label": name.encode(), b"labels": stored, b"data": flat,
           b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}, protocol=2))
      flats.append(flat)
      labels += batch_labels
    add_member(tar, "batches.meta", pickle.dumps(
        {b"label_names": [n.encode() for n in cifar10.LABEL_NAMES],
         b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol=2))
  return np.concatenate(flats), np.asarray(labels)


def cifar_pixels(flat_Nx3072):
  """Pixel (r, c) of channel k is byte k * 1024 + r * 32 + c (R, G, B planes, row-major)."""
  r, c, k = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
  return flat_Nx3072[:, k * 1024 + r * 32 + c]


def test_cifar_from_manual_dir_is_pixel_exact_and_needs_no_tensorflow(tmp_path):
  os.makedirs(tmp_path / "manual")
  flat, labels = make_cifar_archive(tmp_path / "manual" / cifar10.ARCHIVE)
  config = data_config(manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"))
  source = data.get_source(config)
  assert "tensorflow" not in sys.modules
  assert glob.glob(str(tmp_path / "tfds" / "ucsh_cifar10" / "*" / "*.array_record-*"))
  assert len(source) == len(labels) and source.kind == "image"
  np.testing.assert_array_equal(source.labels, labels)
  expected = cifar_pixels(flat)
  for i in range(len(source)):
    example = source[i]
    np.testing.assert_array_equal(example["image"], expected[i])
    assert example["label"] == labels[i]
  # tfds reads the prepared records on its own too (no TensorFlow).
  train = tfds.data_source("ucsh_cifar10", split="train", data_dir=str(tmp_path / "tfds"))
  np.testing.assert_array_equal(train[4]["image"], expected[4])
  splits = data.make_splits(config, source, seed=0, workdir=str(tmp_path / "work"))
  assert len(splits.query) == 4 and len(splits.train) == 4
  assert len(splits.query) + len(splits.database) == len(source)
  assert not np.intersect1d(splits.query, splits.database).size


def test_cifar_downloads_when_online(tmp_path):
  os.makedirs(tmp_path / "site")
  flat, _ = make_cifar_archive(tmp_path / "site" / cifar10.ARCHIVE, per_batch=2, seed=1)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=tmp_path / "site")
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f"http://127.0.0.1:{server.server_address[1]}/{cifar10.ARCHIVE}"
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(cifar10, "URL", url)
      source = data.get_source(data_config(manual_dir=str(tmp_path / "empty"),
                                           data_dir=str(tmp_path / "tfds")))
  finally:
    server.shutdown()
  np.testing.assert_array_equal(source[len(source) - 1]["image"], cifar_pixels(flat)[-1])


def test_cifar_offline_fails_fast_and_names_the_manual_file(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar10, "URL", f"http://127.0.0.1:9/{cifar10.ARCHIVE}")  # Nothing listens.
  start = time.monotonic()
  with pytest.raises(errors.UserError) as error:
    data.get_source(data_config(data_dir=str(tmp_path / "tfds")))
  assert time.monotonic() - start < 30
  default_manual = str(tmp_path / "tfds" / "downloads" / "manual")
  assert cifar10.ARCHIVE in str(error.value) and default_manual in str(error.value)


def test_cifar_labels_shorter_than_data_is_an_error(tmp_path):
  os.makedirs(tmp_path / "manual")
  make_cifar_archive(tmp_path / "manual" / cifar10.ARCHIVE, short_labels="data_batch_3")
  with pytest.raises(ValueError, match="data_batch_3"):
    data.get_source(data_config(manual_dir=str(tmp_path / "manual"),
                                data_dir=str(tmp_path / "tfds")))


def test_cifar_pickle_that_asks_for_code_is_refused(tmp_path):
  path = tmp_path / cifar10.ARCHIVE
  with tarfile.open(path, "w:gz") as tar:
    add_member(tar, "test_batch", b"cos\nsystem\n(S'true'\ntR.")  # Would call os.system.
  with pytest.raises(ValueError, match="os.system"):
    cifar10.read_archive(path)


def write_jpeg(path, rng, mode="RGB"):
  height, width = rng.integers(12, 40, 2)
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  PIL.Image.fromarray(pixels).convert(mode).save(path, format="JPEG", quality=90)


def pil_rgb(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def make_mirflickr(root, n=7, seed=0):
  """mirflickr/im1..n.jpg (one gray) and annotations/<label>.txt; returns labels (n, 24)."""
  rng = np.random.default_rng(seed)
  os.makedirs(root / "mirflickr")
  os.makedirs(root / "annotations")
  for i in range(1, n + 1):
    write_jpeg(root / "mirflickr" / f"im{i}.jpg", rng, mode="L" if i == 2 else "RGB")
  labels = (rng.random((n, len(mirflickr.LABELS))) < 0.3).astype(np.int32)
  labels[n - 1] = 0  # An image with no label.
  labels[0, 0] = 1
  for j, name in enumerate(mirflickr.LABELS):
    (root / "annotations" / f"{name}.txt").write_text(
        "".join(f"{i + 1}\n" for i in np.flatnonzero(labels[:, j])))
    (root / "annotations" / f"{name}_r1.txt").write_text("1\n")  # Not a separate label.
  return labels


def test_mirflickr_matches_pil_and_annotations(tmp_path):
  labels = make_mirflickr(tmp_path / "manual")
  config = data_config(name="mirflickr", manual_dir=str(tmp_path / "manual"),
                       data_dir=str(tmp_path / "tfds"), num_query=2, num_train=3)
  source = data.get_source(config)
  assert len(source) == len(labels)
  np.testing.assert_array_equal(source.labels, labels)
  for i in range(len(source)):
    np.testing.assert_array_equal(
        source[i]["image"], pil_rgb(tmp_path / "manual" / "mirflickr" / f"im{i + 1}.jpg"))
    np.testing.assert_array_equal(source[i]["label"], labels[i])
  splits = data.make_splits(config, source, seed=3, workdir=None)
  unlabelled = np.flatnonzero(labels.sum(1) == 0)
  assert len(splits.query) == 2 and len(splits.train) == 3
  assert not np.intersect1d(np.concatenate(splits), unlabelled).size
  assert len(splits.query) + len(splits.database) == len(labels) - len(unlabelled)
  assert np.isin(splits.train, splits.database).all()


def test_mirflickr_missing_annotation_file_says_which_and_where(tmp_path):
  make_mirflickr(tmp_path / "manual")
  os.remove(tmp_path / "manual" / "annotations" / "sky.txt")
  with pytest.raises(errors.UserError, match="sky.txt") as error:
    data.get_source(data_config(name="mirflickr", manual_dir=str(tmp_path / "manual"),
                                data_dir=str(tmp_path / "tfds")))
  assert str(tmp_path / "manual" / "annotations") in str(error.value)


def test_mirflickr_corrupt_image_is_named_or_skipped(tmp_path, caplog):
  labels = make_mirflickr(tmp_path / "manual")
  bad = tmp_path / "manual" / "mirflickr" / "im3.jpg"
  bad.write_bytes(bad.read_bytes()[:40])  # Truncated JPEG.
  config = data_config(name="mirflickr", manual_dir=str(tmp_path / "manual"),
                       data_dir=str(tmp_path / "tfds"))
  with pytest.raises(data.CorruptImageError, match="im3.jpg"):
    data.get_source(config)
  with caplog.at_level(logging.WARNING):
    source = data.get_source(ml_collections.ConfigDict({**config.to_dict(), "skip_corrupt": True}))
  assert len(source) == len(labels) - 1
  np.testing.assert_array_equal(source.labels, np.delete(labels, 2, axis=0))
  np.testing.assert_array_equal(source[2]["image"],
                                pil_rgb(tmp_path / "manual" / "mirflickr" / "im4.jpg"))
  assert "skipped 1 unreadable" in caplog.text and "im3.jpg" in caplog.text


def make_nus_wide(root, n=8, concepts=("car", "dog", "person", "sky", "water"), seed=0):
  """Images under Flickr/<folder>/ and both list formats; returns (relative paths, labels)."""
  rng = np.random.default_rng(seed)
  relative = [f"Flickr/{concepts[i % 3]}/{i:04d}_{1000 + i}.jpg" for i in range(n)]
  for i, rel in enumerate(relative):
    os.makedirs(os.path.dirname(root / "official" / rel), exist_ok=True)
    write_jpeg(root / "official" / rel, rng, mode="CMYK" if i == 3 else "RGB")
  labels = (rng.random((n, len(concepts))) < 0.4).astype(np.int32)
  os.makedirs(root / "official" / "ImageList")
  os.makedirs(root / "official" / "Groundtruth" / "AllLabels")
  (root / "official" / "ImageList" / "Imagelist.txt").write_text(
      "".join("C:\\ImageData\\" + rel.replace("/", "\\") + "\n" for rel in relative))
  for j, concept in enumerate(concepts):
    (root / "official" / "Groundtruth" / "AllLabels" / f"Labels_{concept}.txt").write_text(
        "".join(f"{v}\n" for v in labels[:, j]))
  os.makedirs(root / "list")
  os.symlink(root / "official" / "Flickr", root / "list" / "Flickr")
  (root / "list" / "nus_wide_list.txt").write_text(
      "".join(f"{rel} {' '.join(map(str, row))}\n" for rel, row in zip(relative, labels)))
  return relative, labels


def test_nus_wide_both_list_formats_give_the_same_dataset(tmp_path):
  relative, labels = make_nus_wide(tmp_path)
  sources = [data.get_source(data_config(
      name="nus_wide", manual_dir=str(tmp_path / layout), data_dir=str(tmp_path / f"tfds_{layout}"),
      top_concepts=3)) for layout in ("official", "list")]
  counts = labels.sum(0)
  for source in sources:
    assert len(source) == len(relative) and source.labels.shape == (len(relative), 3)
    # The kept columns are the 3 most frequent concepts, most frequent first.
    kept = [next(j for j in range(labels.shape[1]) if np.array_equal(labels[:, j], col))
            for col in source.labels.T]
    assert sorted(counts[kept], reverse=True) == list(counts[kept])
    assert counts[kept].min() >= np.delete(counts, kept).max()
    for i in range(len(source)):
      np.testing.assert_array_equal(source[i]["image"],
                                    pil_rgb(tmp_path / "official" / relative[i]))
  np.testing.assert_array_equal(sources[0].labels, sources[1].labels)


def test_nus_wide_label_length_mismatches_are_errors(tmp_path):
  make_nus_wide(tmp_path)
  label_file = tmp_path / "official" / "Groundtruth" / "AllLabels" / "Labels_dog.txt"
  label_file.write_text("".join(label_file.read_text().splitlines(keepends=True)[:-1]))
  with pytest.raises(ValueError, match="Labels_dog.txt has 7 lines but .* lists 8 images"):
    data.get_source(data_config(name="nus_wide", manual_dir=str(tmp_path / "official"),
                                data_dir=str(tmp_path / "tfds")))
  listing = tmp_path / "list" / "nus_wide_list.txt"
  lines = listing.read_text().splitlines(keepends=True)
  listing.write_text("".join(lines[:4] + [lines[4].rstrip() + " 1\n"] + lines[5:]))
  with pytest.raises(ValueError, match="line 5 has 6 label values, line 1 has 5"):
    data.get_source(data_config(name="nus_wide", manual_dir=str(tmp_path / "list"),
                                data_dir=str(tmp_path / "tfds")))


def test_nus_wide_missing_files_are_named(tmp_path):
  os.makedirs(tmp_path / "manual")
  with pytest.raises(errors.UserError, match="ImageList/Imagelist.txt") as error:
    data.get_source(data_config(name="nus_wide", manual_dir=str(tmp_path / "manual"),
                                data_dir=str(tmp_path / "tfds")))
  assert str(tmp_path / "manual") in str(error.value)


def test_a_second_prepare_from_another_archive_never_returns_the_first_ones_data(tmp_path):
  for folder, seed in (("first", 0), ("second", 1)):
    os.makedirs(tmp_path / folder)
    make_cifar_archive(tmp_path / folder / cifar10.ARCHIVE, seed=seed)
  flat, _ = make_cifar_archive(tmp_path / "second" / cifar10.ARCHIVE, seed=1)
  tfds_dir = tmp_path / "tfds"
  data.get_source(data_config(manual_dir=str(tmp_path / "first"), data_dir=str(tfds_dir)))
  prepared = glob.glob(str(tfds_dir / "ucsh_cifar10" / "*"))
  assert len(prepared) == 1
  with pytest.raises(errors.UserError) as error:
    data.get_source(data_config(manual_dir=str(tmp_path / "second"), data_dir=str(tfds_dir)))
  message = f"{error.value} {error.value.hint}"
  for named in (tmp_path / "first" / cifar10.ARCHIVE, tmp_path / "second" / cifar10.ARCHIVE,
                prepared[0]):
    assert str(named) in message
  # Removing the folder the error names prepares the second archive.
  shutil.rmtree(prepared[0])
  source = data.get_source(data_config(manual_dir=str(tmp_path / "second"),
                                       data_dir=str(tfds_dir)))
  np.testing.assert_array_equal(source[0]["image"], cifar_pixels(flat)[0])


def test_a_moved_archive_is_recognised_by_its_content(tmp_path):
  os.makedirs(tmp_path / "first")
  flat, _ = make_cifar_archive(tmp_path / "first" / cifar10.ARCHIVE)
  config = data_config(manual_dir=str(tmp_path / "first"), data_dir=str(tmp_path / "tfds"))
  before = data.get_source(config)
  shutil.move(tmp_path / "first", tmp_path / "moved")
  after = data.get_source(data_config(manual_dir=str(tmp_path / "moved"),
                                      data_dir=str(tmp_path / "tfds")))
  assert after.fingerprint == before.fingerprint == fingerprint.of_file(
      tmp_path / "moved" / cifar10.ARCHIVE)
  np.testing.assert_array_equal(after[5]["image"], cifar_pixels(flat)[5])
  # No archive in the manual directory (the config names a download): the prepared data are used.
  assert data.get_source(data_config(manual_dir=str(tmp_path / "empty"),
                                     data_dir=str(tmp_path / "tfds"))).fingerprint == \
      before.fingerprint


def test_prepared_data_without_a_source_record_are_refused(tmp_path):
  os.makedirs(tmp_path / "manual")
  make_cifar_archive(tmp_path / "manual" / cifar10.ARCHIVE)
  config = data_config(manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"))
  data.get_source(config)
  (record,) = glob.glob(str(tmp_path / "tfds" / "ucsh_cifar10" / "*" / tfds_builder.SOURCE_FILE))
  os.remove(record)
  with pytest.raises(errors.UserError, match="do not record the source") as error:
    data.get_source(config)
  assert os.path.dirname(record) in error.value.hint


def test_saved_splits_refuse_a_rebuilt_data_set_of_the_same_size(tmp_path):
  os.makedirs(tmp_path / "manual")
  make_cifar_archive(tmp_path / "manual" / cifar10.ARCHIVE, seed=0)
  config = data_config(manual_dir=str(tmp_path / "manual"), data_dir=str(tmp_path / "tfds"))
  first = data.get_source(config)
  data.make_splits(config, first, seed=0, workdir=str(tmp_path / "work"))
  shutil.rmtree(tmp_path / "tfds")
  make_cifar_archive(tmp_path / "manual" / cifar10.ARCHIVE, seed=1)
  second = data.get_source(config)
  assert len(second) == len(first) and second.fingerprint != first.fingerprint
  with pytest.raises(errors.UserError, match="made for other data"):
    data.make_splits(config, second, seed=0, workdir=str(tmp_path / "work"))


def test_folder_sources_are_tied_to_their_files(tmp_path):
  make_mirflickr(tmp_path / "manual")
  config = data_config(name="mirflickr", manual_dir=str(tmp_path / "manual"),
                       data_dir=str(tmp_path / "tfds"))
  data.get_source(config)
  shutil.move(tmp_path / "manual", tmp_path / "moved")  # Same files elsewhere: recognised.
  moved = data_config(name="mirflickr", manual_dir=str(tmp_path / "moved"),
                      data_dir=str(tmp_path / "tfds"))
  data.get_source(moved)
  write_jpeg(tmp_path / "moved" / "mirflickr" / "im4.jpg", np.random.default_rng(9))
  with pytest.raises(errors.UserError, match="not from .*moved"):
    data.get_source(moved)

  make_nus_wide(tmp_path / "nus")
  config = data_config(name="nus_wide", manual_dir=str(tmp_path / "nus" / "official"),
                       data_dir=str(tmp_path / "tfds"), top_concepts=3)
  data.get_source(config)
  label_file = tmp_path / "nus" / "official" / "Groundtruth" / "AllLabels" / "Labels_sky.txt"
  values = label_file.read_text()
  label_file.write_text(values.replace("0", "2").replace("1", "0").replace("2", "1"))  # Same size.
  with pytest.raises(errors.UserError, match="ucsh_nus_wide: the prepared data"):
    data.get_source(config)
