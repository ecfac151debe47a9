"""Fine-tuning a notop VGG16: the conv-base weights file, the average poolings, the frozen prefix
computed once (cache = no cache, frozen layers unchanged, keyed by content), the given splits."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import pytest

import notop_weights
from configs import digits as digits_config
from configs import finetune as finetune_config
from ucsh_jax import epoch_state as epoch_state_lib
from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import models
from ucsh_jax import prefix_cache
from ucsh_jax import train
from ucsh_jax import train_step as train_step_lib
from ucsh_jax import data
from ucsh_jax import parallel
from ucsh_jax.data import splits as splits_lib
from ucsh_jax.models import vgg

WIDTH = 1 / 16
POOL_AFTER = notop_weights.POOL_AFTER


def numpy_pooled(x_NHWC, layers, pooling):
  """The conv base in float64 NumPy, then the global average before or after pool5."""
  x = x_NHWC.astype(np.float64)
  for done, name in enumerate(vgg.CONV_NAMES, 1):
    kernel, bias = layers[name]
    windows = sliding_window_view(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (3, 3), (1, 2))
    x = np.maximum(np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias, 0)
    if done == 13 and pooling == "avg_conv5_3":
      return x.mean((1, 2))
    if done in POOL_AFTER:
      n, h, w, c = x.shape
      x = x.reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
  return x.mean((1, 2))


@pytest.mark.parametrize("pooling", ["avg_conv5_3", "avg_pool5"])
def test_notop_file_gives_the_pooled_features_of_a_numpy_forward(tmp_path, pooling):
  layers = notop_weights.notop_layers()
  notop_weights.write_notop_h5(tmp_path / "notop.h5", layers)
  variables, pixels = models.load_pretrained(str(tmp_path / "notop.h5"))
  assert sorted(variables["params"]) == sorted(vgg.CONV_NAMES)
  assert pixels.channel_order == "BGR"  # Caffe preprocessing
  model = models.UCSH(bits=8, width=WIDTH, decoder_hidden=8, pooling=pooling, dropout_rate=0.0)
  images = np.random.default_rng(1).normal(0, 1, (3, 32, 32, 3)).astype(np.float32)
  params = model.init(jax.random.key(0), images, train=False)["params"]
  params = models.with_pretrained_backbone(params, variables["params"])
  got = model.apply({"params": params}, jnp.asarray(images), train=False)["features"]
  want = numpy_pooled(images, layers, pooling)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_notop_file_with_fc7_pooling_and_bad_fields_are_refused(tmp_path):
  notop_weights.write_notop_h5(tmp_path / "notop.h5", notop_weights.notop_layers())
  config = finetune_config.get_config()
  config.model.width = WIDTH
  config.model.pretrained = str(tmp_path / "notop.h5")
  config.model.pooling, config.model.top, config.model.trainable_from = "fc7", "none", ""
  with pytest.raises(errors.UserError, match="model.pooling=avg_conv5_3"):
    experiment.preprocessing_for(config)
  config = finetune_config.get_config()
  config.model.trainable_from = "conv9_1"
  with pytest.raises(errors.UserError, match="conv5_1, conv5_2, conv5_3$"):
    experiment.validate(config, 1)
  config = finetune_config.get_config()
  config.data.image_size = 8
  with pytest.raises(errors.UserError, match="the minimum is 16"):
    experiment.validate(config, 1)


def test_a_weights_file_of_another_architecture_is_refused(tmp_path):
  layers = notop_weights.notop_layers()
  layers["conv5_3"] = (layers["conv5_3"][0][:, :, :, :16], layers["conv5_3"][1][:16])
  notop_weights.write_notop_h5(tmp_path / "other.h5", layers)
  with pytest.raises(errors.UserError, match=r"block5_conv3/kernel: expected shape \(3, 3, 32, 32\)"):
    models.load_pretrained(str(tmp_path / "other.h5"))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(query_idx=np.array([0, 1, 5000])), "span"),
    (lambda s: s.update(query_idx=np.array([0, 1, 5])), "query and database share"),
])
def test_a_bad_splits_file_is_refused(tmp_path, change, message):
  given = {"query_idx": np.array([0, 1, 2]), "database_idx": np.arange(3, 100),
           "train_idx": np.arange(10, 50)}
  change(given)
  np.savez(tmp_path / "splits.npz", **given)
  config = digits_config.get_config()
  config.data.splits_file = str(tmp_path / "splits.npz")
  source = data.get_source(config.data)
  with pytest.raises(errors.UserError, match=message):
    splits_lib.make_splits(config.data, source, seed=0, workdir=None)


def tiny_finetune_config(cache_dir):
  """A width-1/16 VGG16 on 16 x 16 digits: conv5 trains, the layers below are cached."""
  config = digits_config.get_config()
  config.model.backbone = "vgg16"
  config.model.width = WIDTH
  config.model.pooling = "avg_conv5_3"
  config.model.top = "fc"
  config.model.trainable_from = "conv5_1"
  config.model.prefix_cache_dir = str(cache_dir)
  config.model.decoder_hidden = 16
  config.model.dropout_rate = 0.0
  config.data.image_size = 16
  config.data.num_query, config.data.num_train = 40, 64
  config.data.num_database = 160
  config.bits, config.batch_size, config.num_clusters = 16, 16, 4
  config.optimizer.learning_rate = 1e-2
  config.optimizer.feature_lr_scale = 1.0
  config.optimizer.backbone_lr_scale = 1.0
  config.eval.batch_size = 64
  return config


def _train(run, steps):
  """`steps` steps of the real compiled step from the run's own initial state and source."""
  config = run.config
  cosine = copy.deepcopy(config)
  cosine.similarity.target = "cosine"  # The batches below carry centers, not neighbours.
  method = methods.build(cosine, run.method.feature_dim, jax.random.key(0))
  step_fn = train_step_lib.make_train_step(run.mesh, model=run.model, method=method)
  batches = data.train_iterator(run.source, run.splits.train, global_batch_size=config.batch_size,
                                image_size=config.data.image_size,
                                preprocessing=run.preprocessing, seed=config.seed)
  centers = np.sign(np.random.default_rng(0).normal(size=(len(run.splits.train), config.bits)))
  state = run.state
  key = parallel.replicate(run.mesh, jax.random.key(3))
  threshold = parallel.replicate(run.mesh, np.float32(0.2))
  for _ in range(steps):
    batch = next(batches)
    batch["center"] = centers[batch["index"]].astype(np.float32)
    state, _ = step_fn(state, parallel.global_batch(run.mesh, batch), threshold, key)
  return jax.device_get(state.params)


def test_training_on_the_cache_equals_training_the_whole_network(tmp_path):
  config = tiny_finetune_config(tmp_path / "cache")
  cached = train.setup(config, str(tmp_path / "cached"))
  whole = train.setup(config, str(tmp_path / "whole"), prefix_cache=False)
  assert isinstance(cached.source, prefix_cache.PrefixSource)
  assert whole.source.kind == "image"
  start = jax.device_get(whole.state.params)
  after_cached, after_whole = _train(cached, 3), _train(whole, 3)
  for path, got in jax.tree_util.tree_leaves_with_path(after_cached):
    want = after_whole
    for key in path:
      want = want[key.key]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=str(path))
  for layer in experiment.frozen_layers(config):  # conv1_1 .. conv4_3: bit for bit
    for name in ("kernel", "bias"):
      assert np.array_equal(after_cached["backbone"][layer][name],
                            start["backbone"][layer][name]), layer
  moved = np.abs(after_cached["backbone"]["conv5_1"]["kernel"]
                 - start["backbone"]["conv5_1"]["kernel"]).max()
  assert moved > 1e-4  # conv5 trains


def test_a_cache_is_never_reused_for_other_weights_or_image_size(tmp_path):
  config = tiny_finetune_config(tmp_path / "cache")
  run = train.setup(config, str(tmp_path / "run"), prefix_cache=False)
  params = jax.device_get(run.state.params)
  other = jax.tree.map(lambda x: x * 1.5, params)
  model = prefix_cache.prefix_model(config)
  images = np.stack([data.images.resize(run.source[i]["image"], 16) for i in range(4)])
  inputs = run.preprocessing.apply(images)

  def direct(p):
    return np.asarray(model.apply({"params": p["backbone"]}, inputs, train=False)["prefix"])

  for p in (params, other, params):
    got = prefix_cache.load_or_build(config, str(tmp_path / "run"), run.source, p,
                                     run.preprocessing, run.mesh)
    np.testing.assert_allclose(got.outputs[:4], direct(p), rtol=1e-5, atol=1e-6)
  assert len(list((tmp_path / "cache").glob("prefix-*.npy"))) == 2
  config.data.image_size = 32
  got = prefix_cache.load_or_build(config, str(tmp_path / "run"), run.source, params,
                                   run.preprocessing, run.mesh)
  assert got.outputs.shape[1:3] == (2, 2)  # 32 px: block 4's maps are 2 x 2
  assert len(list((tmp_path / "cache").glob("prefix-*.npy"))) == 3


def test_epoch_changes_against_numpy():
  rng = np.random.default_rng(0)
  n, m = 50, 6

  def state(assign, neigh, t):
    return epoch_state_lib.EpochState(np.int32(0), np.zeros((2, 2), np.float32), assign,
                                      np.float32(t), np.float32(0), neigh)

  neigh_a = np.stack([rng.choice(n, m, replace=False) for _ in range(n)]).astype(np.int32)
  neigh_b = neigh_a.copy()
  neigh_b[:10, :3] = n + np.arange(3)  # 10 lists lose 3 of 6 members
  a, b = rng.integers(0, 4, n), rng.integers(0, 4, n)
  got = epoch_state_lib.changes(state(a, neigh_a, 0.25), state(b, neigh_b, 0.5))
  kept = np.array([len(set(x) & set(y)) for x, y in zip(neigh_a, neigh_b)])
  assert got["assignments_changed"] == pytest.approx(np.mean(a != b))
  assert got["threshold_change"] == pytest.approx(0.25)
  assert got["neighbours_replaced"] == pytest.approx(np.mean(1 - kept / m))
  assert got["neighbour_sets_changed"] == pytest.approx(10 / n)
