"""Progress lines (rate, ETA) for encoding, feature extraction and dataset preparation."""

import os

import ml_collections
import numpy as np
import PIL.Image
import pytest

from configs import features as features_config
from ucsh_jax import data
from ucsh_jax import inference
from ucsh_jax import progress
from ucsh_jax import train
from ucsh_jax.data import cifar10
from ucsh_jax.data import mirflickr


class FakeClock:
  """Seconds that advance by `step` at every reading."""

  def __init__(self, step: float):
    self.now, self.step = 0.0, step

  def __call__(self) -> float:
    self.now += self.step
    return self.now


@pytest.fixture
def lines(monkeypatch):
  """The logged progress lines; the clock advances 20 s per reading (past every interval)."""
  logged = []
  monkeypatch.setattr(progress, "_log", logged.append)
  monkeypatch.setattr(progress.time, "monotonic", FakeClock(20.0))
  return logged


def test_line_every_interval_with_rate_and_eta(monkeypatch):
  logged = []
  monkeypatch.setattr(progress, "_log", logged.append)
  clock = FakeClock(0.0)
  line = progress.Progress("encoding", 100, unit="examples", every_s=10.0, clock=clock)
  clock.now = 5.0
  line.update(10)
  assert not logged  # Less than every_s since the start.
  clock.now = 10.0
  line.update(10)
  assert logged == ["encoding: 20/100 examples (20%)  2.0 examples/s  ETA 0:00:40"]
  clock.now = 15.0
  line.update(10)
  assert len(logged) == 1  # 5 s since the last line.
  clock.now = 3600.0 + 20.0
  line.update(70)
  assert len(logged) == 1  # Complete: only done() reports.
  line.done()
  assert logged[-1] == "encoding: 100 examples in 1:00:20 (0.0 examples/s)"
  assert progress.progress_line("x", 1, 3601, 1.0, "images").endswith("ETA 1:00:00")


def test_outputs_for_reports_feature_extraction_and_encoding(tmp_path, lines):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "f.npz", features=rng.random((50, 12)).astype(np.float32),
           labels=rng.integers(0, 3, 50))
  config = features_config.get_config()
  config.data.path = str(tmp_path / "f.npz")
  config.data.num_query, config.data.num_train = 10, 16
  config.batch_size, config.eval.batch_size, config.bits, config.num_clusters = 8, 16, 8, 2
  run = train.setup(config, str(tmp_path / "run"))
  forward = inference.make_forward(run.model, run.mesh)
  for key in ("features", "codes"):
    lines.clear()
    out = inference.outputs_for(forward, run.state.params, run.source, run.splits.database,
                                key, **train.eval_kwargs(run))
    assert len(out) == 40
    what = {"features": "feature extraction", "codes": "encoding"}[key]
    # 40 examples in batches of 16: a line after 16 and 32, then the total.
    assert [l.split("  ")[0] for l in lines[:2]] == [
        f"{what}: 16/40 examples (40%)", f"{what}: 32/40 examples (80%)"]
    assert "examples/s  ETA " in lines[0]
    assert lines[-1].startswith(f"{what}: 40 examples in ") and len(lines) == 3
  lines.clear()
  inference.outputs_for(forward, run.state.params, run.source, run.splits.query, "codes",
                        description="encoding the queries", **train.eval_kwargs(run))
  assert lines[-1].startswith("encoding the queries: 10 examples in ")


def test_cifar_preparation_reports_each_split(tmp_path, lines):
  builder = cifar10.UcshCifar10(data_dir=str(tmp_path), manual_dir=str(tmp_path))
  images_Nx32x32x3 = np.zeros((3, 32, 32, 3), np.uint8)
  examples = list(builder._generate_examples("test", images_Nx32x32x3, np.arange(3)))
  assert [key for key, _ in examples] == ["test_00000", "test_00001", "test_00002"]
  assert lines[0].startswith("ucsh_cifar10 test: preparing: 1/3 images (33%)")
  assert lines[-1].startswith("ucsh_cifar10 test: preparing: 3 images in ")


def _write_jpeg(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_mirflickr_and_nus_wide_preparation_report(tmp_path, lines):
  manual = tmp_path / "mirflickr_manual"
  for i in (1, 2, 3):
    _write_jpeg(manual / "mirflickr" / f"im{i}.jpg", 40 * i)
  os.makedirs(manual / "annotations")
  for name in mirflickr.LABELS:
    (manual / "annotations" / f"{name}.txt").write_text("1\n2\n3\n")
  base = dict(path="", data_dir=str(tmp_path / "tfds"), image_size=8, num_query=1,
              num_train=1, num_database=-1, skip_corrupt=False, num_workers=0, top_concepts=2)
  assert len(data.get_source(ml_collections.ConfigDict(
      dict(base, name="mirflickr", manual_dir=str(manual))))) == 3
  assert lines[0].startswith("ucsh_mirflickr: preparing: 1/3 images (33%)")
  assert lines[-1].startswith("ucsh_mirflickr: preparing: 3 images in ")

  lines.clear()
  manual = tmp_path / "nus_manual"
  for i in range(4):
    _write_jpeg(manual / "images" / f"{i}.jpg", 50 * i)
  (manual / "nus_wide_list.txt").write_text("".join(f"{i}.jpg 1 {i % 2}\n" for i in range(4)))
  assert len(data.get_source(ml_collections.ConfigDict(
      dict(base, name="nus_wide", manual_dir=str(manual))))) == 4
  assert lines[0].startswith("ucsh_nus_wide: preparing: 1/4 images (25%)")
  assert lines[-1].startswith("ucsh_nus_wide: preparing: 4 images in ")
