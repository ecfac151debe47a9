"""grain pipelines: normalised batches, per-epoch shuffling, host sharding, exact resume, eval."""

import grain
import numpy as np
import PIL.Image
import pytest
from etils import epath

from ucsh_jax import data
from ucsh_jax.data import features
from ucsh_jax.preprocessing import CAFFE
from ucsh_jax.preprocessing import IMAGENET


class ImageSource:
  """Random RGB images of assorted sizes, single labels."""

  kind = "image"

  def __init__(self, n=40, seed=0):
    rng = np.random.default_rng(seed)
    self.images = [rng.integers(0, 256, (rng.integers(5, 20), rng.integers(5, 20), 3),
                                dtype=np.uint8) for _ in range(n)]
    self.labels = rng.integers(0, 4, n).astype(np.int32)

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    return {"image": self.images[i], "label": self.labels[i]}


def expected_image(image, size, preprocessing):
  """PIL bilinear resize to size x size, then the preprocessing's own formula."""
  resized = np.asarray(PIL.Image.fromarray(image).resize((size, size), PIL.Image.BILINEAR),
                       np.float32)
  x = resized * (preprocessing.pixel_range / 255.0)
  if preprocessing.channel_order == "BGR":
    x = x[..., ::-1]
  return (x - np.float32(preprocessing.mean)) / np.float32(preprocessing.std)


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_train_batches_are_resized_normalised_and_indexed():
  source = ImageSource()
  train_idx = np.arange(3, 40, 2)  # 19 images.
  it = data.train_iterator(source, train_idx, global_batch_size=4, image_size=12,
                           preprocessing=CAFFE, seed=0, shard=(0, 1))
  batch = next(it)
  assert set(batch) == {"image", "index"}
  assert batch["image"].shape == (4, 12, 12, 3) and batch["image"].dtype == np.float32
  assert batch["index"].dtype == np.int32
  for image, index in zip(batch["image"], batch["index"]):
    want = expected_image(source.images[train_idx[index]], 12, CAFFE)
    np.testing.assert_allclose(image, want, rtol=1e-5, atol=1e-3)
    resized = np.asarray(PIL.Image.fromarray(source.images[train_idx[index]]).resize(
        (12, 12), PIL.Image.BILINEAR))
    np.testing.assert_array_equal(image, CAFFE.apply(resized))  # Bit for bit.


def test_every_epoch_is_a_fresh_permutation_without_the_remainder():
  source = ImageSource()
  train_idx = np.arange(10)
  it = data.train_iterator(source, train_idx, global_batch_size=3, image_size=4,
                           preprocessing=IMAGENET, seed=1, shard=(0, 1))
  steps = len(train_idx) // 3
  epochs = [np.concatenate([b["index"] for b in take(it, steps)]) for _ in range(3)]
  for epoch, order in enumerate(epochs):  # The documented order.
    np.testing.assert_array_equal(
        order, np.random.default_rng([1, epoch]).permutation(len(train_idx))[:steps * 3])
  assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize("process_count", [2, 4])
def test_hosts_take_disjoint_slices_of_the_same_global_batch(process_count):
  source = ImageSource(n=30)
  train_idx = np.arange(2, 30)
  kwargs = dict(global_batch_size=8, image_size=4, preprocessing=IMAGENET, seed=7)
  single = take(data.train_iterator(source, train_idx, shard=(0, 1), **kwargs), 7)
  hosts = [take(data.train_iterator(source, train_idx, shard=(p, process_count), **kwargs), 7)
           for p in range(process_count)]
  for step in range(7):
    parts = [hosts[p][step] for p in range(process_count)]
    assert all(len(part["index"]) == 8 // process_count for part in parts)
    np.testing.assert_array_equal(np.concatenate([part["index"] for part in parts]),
                                  single[step]["index"])
    np.testing.assert_array_equal(np.concatenate([part["image"] for part in parts]),
                                  single[step]["image"])


def test_iterator_resumes_exactly_from_a_saved_state(tmp_path):
  source = ImageSource()
  kwargs = dict(global_batch_size=5, image_size=6, preprocessing=IMAGENET, seed=3, shard=(0, 1))
  it = data.train_iterator(source, np.arange(40), **kwargs)
  take(it, 9)  # Crosses the first epoch boundary (8 steps).
  state = it.get_state()
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path),
                                            args=grain.checkpoint.CheckpointSave(it))
  expected = take(it, 4)
  restored = data.train_iterator(source, np.arange(40), **kwargs)
  restored.set_state(state)
  from_file = grain.checkpoint.CheckpointHandler().restore(
      epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(
          data.train_iterator(source, np.arange(40), **kwargs)))
  for resumed in (restored, from_file):
    for want, got in zip(expected, take(resumed, 4)):
      np.testing.assert_array_equal(want["index"], got["index"])
      np.testing.assert_array_equal(want["image"], got["image"])


def test_worker_processes_give_the_same_batches_and_resume():
  source = ImageSource(n=24)
  kwargs = dict(global_batch_size=4, image_size=8, preprocessing=IMAGENET, seed=5, shard=(0, 1))
  in_process = take(data.train_iterator(source, np.arange(24), **kwargs), 8)
  it = data.train_iterator(source, np.arange(24), num_workers=2, **kwargs)
  workers = take(it, 5)
  state = it.get_state()
  workers += take(it, 3)
  it.close()
  resumed = data.train_iterator(source, np.arange(24), num_workers=2, **kwargs)
  resumed.set_state(state)
  for want, got in zip(in_process, workers):
    np.testing.assert_array_equal(want["index"], got["index"])
    np.testing.assert_array_equal(want["image"], got["image"])
  for want, got in zip(in_process[5:], take(resumed, 3)):
    np.testing.assert_array_equal(want["index"], got["index"])
    np.testing.assert_array_equal(want["image"], got["image"])
  resumed.close()


def test_eval_visits_every_index_once_in_order_with_padding():
  source = ImageSource(n=23)
  indices = np.arange(1, 23, 2)  # 11 images.
  batches = list(data.eval_batches(source, indices, batch_size=4, image_size=5,
                                   preprocessing=IMAGENET, shard=(0, 1)))
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(12) < 11)
  np.testing.assert_array_equal(index[mask], np.arange(11))
  assert (index[~mask] == -1).all()
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels[mask], source.labels[indices])
  images = np.concatenate([b["image"] for b in batches])
  np.testing.assert_allclose(images[10], expected_image(source.images[21], 5, IMAGENET),
                             rtol=1e-5, atol=1e-5)
  assert (images[11] == IMAGENET.apply(np.zeros((5, 5, 3), np.uint8))).all()


def test_eval_host_slices_cover_the_set_with_equal_batch_counts():
  source = ImageSource(n=13)
  indices = np.arange(13)
  per_host = [list(data.eval_batches(source, indices, batch_size=2, image_size=3,
                                     preprocessing=IMAGENET, shard=(p, 3))) for p in range(3)]
  assert len({len(batches) for batches in per_host}) == 1
  seen = np.concatenate([b["index"][b["mask"]] for batches in per_host for b in batches])
  np.testing.assert_array_equal(seen, indices)


def test_feature_batches_skip_preprocessing(tmp_path):
  rng = np.random.default_rng(0)
  feats, labels = rng.normal(size=(9, 6)), (rng.random((9, 3)) < 0.5).astype(np.int64)
  np.savez(tmp_path / "f.npz", features=feats, labels=labels)
  source = features.FeatureSource(str(tmp_path / "f.npz"))
  batch = next(data.train_iterator(source, np.arange(9), global_batch_size=4, image_size=224,
                                   preprocessing=None, seed=0, shard=(0, 1)))
  np.testing.assert_allclose(batch["features"], feats[batch["index"]].astype(np.float32))
  batches = list(data.eval_batches(source, np.arange(2, 9), batch_size=4, image_size=224,
                                   preprocessing=IMAGENET, shard=(0, 1)))
  assert batches[1]["label"].shape == (4, 3)
  np.testing.assert_array_equal(batches[1]["label"][:3], labels[6:9])
  np.testing.assert_allclose(batches[0]["features"], feats[2:6].astype(np.float32))


def test_bad_arguments_are_errors():
  source = ImageSource(n=10)
  with pytest.raises(ValueError, match="needs a Preprocessing"):
    data.eval_batches(source, np.arange(10), batch_size=4, image_size=4, preprocessing=None)
  with pytest.raises(ValueError, match="multiple of the process count 4"):
    data.train_iterator(source, np.arange(10), global_batch_size=6, image_size=4,
                        preprocessing=IMAGENET, seed=0, shard=(0, 4))
  with pytest.raises(ValueError, match="fewer than one global batch"):
    data.train_iterator(source, np.arange(3), global_batch_size=4, image_size=4,
                        preprocessing=IMAGENET, seed=0, shard=(0, 1))
