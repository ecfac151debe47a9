"""Tests of the Flax VGG16 against NumPy, and of its parameter layout."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from random_params import random_params
from ucsh_jax import models
from ucsh_jax.models import vgg

WIDTH = 1 / 16  # conv widths 4 .. 32, fc 256



def _loop_adaptive_pool(x_NHWC, size):
  """torch AdaptiveAvgPool2d by its definition: cell i averages [floor(i*n/s), ceil((i+1)*n/s))."""
  n, h, w, c = x_NHWC.shape
  out = np.zeros((n, size, size, c), np.float64)
  for i in range(size):
    for j in range(size):
      rows = slice(math.floor(i * h / size), math.ceil((i + 1) * h / size))
      cols = slice(math.floor(j * w / size), math.ceil((j + 1) * w / size))
      out[:, i, j] = x_NHWC[:, rows, cols].mean(axis=(1, 2))
  return out


def test_full_vgg16_has_torchvision_parameter_count():
  model = models.VGG16(num_classes=1000)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  shapes = jax.tree.map(lambda a: tuple(a.shape), variables["params"])
  assert shapes == models.vgg16_param_shapes(1.0, 7, 1000)
  count = sum(math.prod(s.shape) for s in jax.tree.leaves(variables))
  # Independent count: 3x3 convs with bias, then the three linears of torchvision's VGG16.
  channels = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  convs = sum(9 * a * b + b for a, b in zip(channels[:-1], channels[1:]))
  linears = sum(a * b + b for a, b in ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000)))
  assert count == convs + linears == 138_357_544
  assert sorted(variables["params"]) == sorted(vgg.CONV_NAMES + vgg.FC_NAMES)


@pytest.mark.parametrize("in_hw,size", [((1, 1), 7), ((2, 3), 7), ((5, 5), 3), ((7, 7), 7),
                                        ((14, 9), 7)])
def test_adaptive_avg_pool_matches_torch_definition(in_hw, size):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = np.asarray(models.adaptive_avg_pool(jnp.asarray(x), size))
  np.testing.assert_allclose(got, _loop_adaptive_pool(x, size), rtol=1e-6, atol=1e-6)
  if in_hw == (1, 1):  # upsampling by replication
    np.testing.assert_allclose(got, np.broadcast_to(x, got.shape), rtol=1e-6)


@pytest.fixture(scope="module")
def small_vgg():
  model = models.VGG16(num_classes=10, width=WIDTH, pooled_size=2)
  variables = {"params": random_params(model, (1, 32, 32, 3))}
  images = np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32)
  return model, variables, images


def test_vgg_outputs_shapes_and_dtypes(small_vgg):
  model, variables, images = small_vgg
  out = model.apply(variables, images, train=False)
  assert sorted(out) == ["fc6", "fc7", "logits"]
  assert out["fc6"].shape == out["fc7"].shape == (3, 256)
  assert out["logits"].shape == (3, 10)
  assert all(v.dtype == jnp.float32 for v in out.values())
  assert float(jnp.min(out["fc6"])) >= 0 and float(jnp.min(out["fc7"])) >= 0
  shapes = jax.tree.map(lambda a: tuple(a.shape), variables["params"])
  assert shapes == models.vgg16_param_shapes(WIDTH, 2, 10)
  no_fc8 = models.VGG16(width=WIDTH, pooled_size=2)
  out = no_fc8.apply({"params": {k: v for k, v in variables["params"].items() if k != "fc8"}},
                     images, train=False)
  assert sorted(out) == ["fc6", "fc7"]


def test_vgg_dropout_acts_after_fc6_and_fc7_only_in_train_mode(small_vgg):
  model, variables, images = small_vgg
  evals = [model.apply(variables, images, train=False) for _ in range(2)]
  np.testing.assert_array_equal(evals[0]["logits"], evals[1]["logits"])
  trains = [model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(k)})
            for k in (1, 2)]
  # fc6 is reported before its dropout, so only fc7 and the logits change.
  np.testing.assert_allclose(trains[0]["fc6"], evals[0]["fc6"], rtol=1e-6, atol=1e-6)
  assert not np.allclose(trains[0]["fc7"], evals[0]["fc7"])
  assert not np.allclose(trains[0]["logits"], trains[1]["logits"])


def test_vgg_bfloat16_computes_in_bf16_with_float32_params(small_vgg):
  _, variables, images = small_vgg
  model = models.VGG16(num_classes=10, width=WIDTH, pooled_size=2, dtype=jnp.bfloat16)
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = model.apply(variables, images, train=False)
  want = models.VGG16(num_classes=10, width=WIDTH, pooled_size=2).apply(
      variables, images, train=False)
  assert all(v.dtype == jnp.float32 for v in out.values())
  scale = float(jnp.max(jnp.abs(want["logits"])))
  np.testing.assert_allclose(out["logits"], want["logits"], atol=0.05 * scale)
  assert not np.array_equal(out["logits"], want["logits"])  # rounded to bf16 on the way


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 16, 16, 3), (32, 32, 3)])
def test_vgg_rejects_bad_images(shape):
  with pytest.raises(ValueError, match=r"VGG16 (expects|needs) images"):
    jax.eval_shape(
        lambda: models.VGG16(width=WIDTH).init(jax.random.key(0), jnp.zeros(shape), train=False))
