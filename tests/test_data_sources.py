"""Digits, image folders, feature files, get_source errors and the prepare command."""

import logging
import os
import subprocess
import sys

import ml_collections
import numpy as np
import PIL.Image
import pytest
from sklearn import datasets

from ucsh_jax import data
from ucsh_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_config(**fields):
  base = dict(name="digits", path="", manual_dir="", data_dir="", skip_corrupt=False)
  return ml_collections.ConfigDict({**base, **fields})


def test_digits_are_scaled_gray_replicated_to_rgb():
  source = data.get_source(data_config())
  digits = datasets.load_digits()
  assert len(source) == len(digits.target) and source.kind == "image"
  np.testing.assert_array_equal(source.labels, digits.target)
  for i in (0, 500, len(source) - 1):
    image = source[i]["image"]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    for channel in range(3):
      np.testing.assert_array_equal(image[..., channel], np.round(digits.images[i] / 16 * 255))
    assert source[i]["label"] == digits.target[i]


def make_folder(root, seed=0):
  """root/<class>/ with PNG and JPEG files (one in a sub-folder); returns [(path, class)]."""
  rng = np.random.default_rng(seed)
  files = []
  for name, count in (("cat", 3), ("ant", 2), ("bee", 2)):
    os.makedirs(root / name / "more")
    for k in range(count):
      ext = ".png" if k % 2 else ".JPG"
      path = root / name / ("more" if k == 2 else "") / f"{k}{ext}"
      pixels = rng.integers(0, 256, (rng.integers(6, 20), rng.integers(6, 20), 3), dtype=np.uint8)
      PIL.Image.fromarray(pixels).save(path, format="PNG" if ext == ".png" else "JPEG")
      files.append((str(path), name))
  (root / "ant" / "notes.txt").write_text("not an image")
  return files


def pil_rgb(path):
  with PIL.Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def test_image_folder_labels_by_sorted_class_and_decodes_like_pil(tmp_path):
  files = make_folder(tmp_path / "images")
  source = data.get_source(data_config(name="image_folder", path=str(tmp_path / "images")))
  classes = sorted({name for _, name in files})
  assert len(source) == len(files)
  for path, name in files:
    i = source.paths.index(path)
    np.testing.assert_array_equal(source[i]["image"], pil_rgb(path))
    assert source[i]["label"] == classes.index(name) == source.labels[i]


def test_image_folder_corrupt_file_is_named_or_skipped(tmp_path, caplog):
  files = make_folder(tmp_path / "images")
  bad = files[1][0]
  with open(bad, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n broken")
  source = data.get_source(data_config(name="image_folder", path=str(tmp_path / "images")))
  with pytest.raises(data.CorruptImageError, match=os.path.basename(bad)) as error:
    source[source.paths.index(bad)]
  assert bad in str(error.value)
  with caplog.at_level(logging.WARNING):
    skipping = data.get_source(data_config(name="image_folder", path=str(tmp_path / "images"),
                                           skip_corrupt=True))
  assert len(skipping) == len(files) - 1 and bad not in skipping.paths
  assert "skipped 1 unreadable" in caplog.text


def test_feature_file_errors_name_the_problem(tmp_path):
  np.savez(tmp_path / "short.npz", features=np.zeros((5, 3)), labels=np.zeros(4, np.int64))
  with pytest.raises(ValueError, match=r"\(5, 3\) and 'labels' \(4,\)"):
    data.get_source(data_config(name="features", path=str(tmp_path / "short.npz")))
  np.savez(tmp_path / "nolabels.npz", features=np.zeros((5, 3)))
  with pytest.raises(errors.UserError, match="'labels'"):
    data.get_source(data_config(name="features", path=str(tmp_path / "nolabels.npz")))
  with pytest.raises(ValueError, match="unknown data.name 'mnist'"):
    data.get_source(data_config(name="mnist"))


def test_prepare_command_writes_splits_and_prints_sizes(tmp_path):
  config_file = tmp_path / "config.py"
  config_file.write_text(
      "import ml_collections\n\n\ndef get_config():\n"
      "  config = ml_collections.ConfigDict()\n  config.seed = 3\n"
      "  config.data = ml_collections.ConfigDict(dict(name='digits', path='', manual_dir='', "
      "data_dir='', image_size=32, num_query=50, num_train=100, num_database=-1, "
      "skip_corrupt=False, num_workers=0, top_concepts=10))\n  return config\n")
  result = subprocess.run(
      [sys.executable, "-m", "ucsh_jax.data.prepare", f"--config={config_file}",
       "--config.data.num_query=60", f"--workdir={tmp_path / 'work'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr
  sizes = {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()
           if line.startswith("  ")}
  saved = {name: np.load(tmp_path / "work" / "splits" / f"{name}.npy")
           for name in ("query", "database", "train")}
  assert sizes == {name: len(idx) for name, idx in saved.items()}
  assert sizes["query"] == 60 and sizes["train"] == 100
  assert sizes["query"] + sizes["database"] == len(datasets.load_digits().target)
