"""Tests of HashHead, UCSH and with_pretrained_backbone against NumPy."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from random_params import random_params
from ucsh_jax import models
from ucsh_jax import ops
from ucsh_jax.models import ucsh as models_ucsh
from ucsh_jax.models import vgg

WIDTH = 1 / 16  # fc7 width 256
BITS = 8



def _numpy_head_eval(params, x):
  logits = x @ params["hash"]["kernel"] + params["hash"]["bias"]
  codes = np.where(logits >= 0, 1.0, -1.0)
  hidden = np.maximum(codes @ params["decoder_hidden"]["kernel"]
                      + params["decoder_hidden"]["bias"], 0)
  return logits, codes, hidden @ params["decoder_out"]["kernel"] + params["decoder_out"]["bias"]


def test_head_eval_matches_numpy_with_sign_of_zero_positive():
  head = models.HashHead(bits=BITS, feature_dim=24, decoder_hidden=16)
  params = random_params(head, (1, 24))
  params["hash"]["bias"][0] = 0.0
  x = np.abs(np.random.default_rng(1).normal(size=(5, 24))).astype(np.float32)
  x[0] = 0.0  # logit (0, 0) is exactly 0 and must give code +1
  out = head.apply({"params": params}, x, train=False)
  logits, codes, reconstruction = _numpy_head_eval(params, x)
  assert out["logits"][0, 0] == 0 and out["codes"][0, 0] == 1
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
      "logits": ((5, BITS), jnp.float32), "codes": ((5, BITS), jnp.float32),
      "reconstruction": ((5, 24), jnp.float32)}
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out["codes"], codes)
  np.testing.assert_allclose(out["reconstruction"], reconstruction, rtol=1e-5, atol=1e-5)


def test_head_train_decodes_bernoulli_samples_with_straight_through_gradient():
  n = 4000
  head = models.HashHead(bits=BITS, feature_dim=BITS, decoder_hidden=2 * BITS, dropout_rate=0.0)
  params = random_params(head, (1, BITS))
  eye = np.eye(BITS, dtype=np.float32)
  # Decoder relu(z) - relu(-z) = z, so the reconstruction shows the sampled code itself.
  params["decoder_hidden"] = {"kernel": np.concatenate([eye, -eye], 1),
                              "bias": np.zeros(2 * BITS, np.float32)}
  params["decoder_out"] = {"kernel": np.concatenate([eye, -eye], 0),
                           "bias": np.zeros(BITS, np.float32)}
  x = np.tile(np.random.default_rng(2).uniform(size=(1, BITS)).astype(np.float32), (n, 1))
  weights = np.random.default_rng(3).normal(size=(2, n, BITS)).astype(np.float32)

  def loss(p, key):
    out = head.apply({"params": p}, x, train=True, rngs={"sample": key})
    return jnp.sum(weights[0] * out["reconstruction"]) + jnp.sum(weights[1] * out["codes"]), out

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (_, out), grads = step(params, jax.random.key(0))
  (_, out2), _ = step(params, jax.random.key(1))
  z = np.asarray(out["reconstruction"])
  np.testing.assert_array_equal(np.abs(z), 1.0)
  assert not np.array_equal(z, np.asarray(out2["reconstruction"]))
  logits = x[0] @ params["hash"]["kernel"] + params["hash"]["bias"]
  np.testing.assert_allclose(out["logits"][0], logits, rtol=1e-5, atol=1e-5)
  p = 1 / (1 + np.exp(-logits))
  mean = 2 * p - 1
  np.testing.assert_array_less(np.abs(z.mean(0) - mean), 4 * np.sqrt((1 - mean**2) / n) + 1e-3)
  # d z / d h = d (2 sigmoid(h) - 1) / d h = 2 p (1 - p); d codes / d h = 1.
  want = (weights[0] * 2 * p * (1 - p) + weights[1]).sum(0)
  np.testing.assert_allclose(grads["hash"]["bias"], want, rtol=1e-4, atol=1e-3)


def test_head_tanh_codes_dropout_and_bfloat16():
  head = models.HashHead(bits=BITS, feature_dim=24, decoder_hidden=16, code_activation="tanh")
  params = random_params(head, (1, 24))
  x = np.abs(np.random.default_rng(4).normal(size=(6, 24))).astype(np.float32)
  out = head.apply({"params": params}, x, train=False)
  logits, _, reconstruction = _numpy_head_eval(params, x)
  np.testing.assert_allclose(out["codes"], np.tanh(logits), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["reconstruction"], reconstruction, rtol=1e-5, atol=1e-5)
  train = head.apply({"params": params}, x, train=True,
                     rngs={"dropout": jax.random.key(0), "sample": jax.random.key(1)})
  assert not np.allclose(train["logits"], out["logits"])  # features dropped before the hash

  bf16 = models.HashHead(bits=BITS, feature_dim=24, decoder_hidden=16, dtype=jnp.bfloat16)
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, train=False))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))
  out16 = bf16.apply({"params": params}, x, train=False)
  assert all(v.dtype == jnp.float32 for v in out16.values())
  np.testing.assert_allclose(out16["logits"], logits, atol=0.05 * np.abs(logits).max())
  with pytest.raises(ValueError, match="code_activation"):
    models.HashHead(bits=BITS, feature_dim=24, code_activation="relu").apply(
        {"params": params}, x, train=False)
  with pytest.raises(ValueError, match=r"features of shape \(n, 24\)"):
    head.apply({"params": params}, x[:, :20], train=False)


@pytest.fixture(scope="module")
def ucsh_setup():
  model = models.UCSH(bits=BITS, width=WIDTH, pooled_size=2, decoder_hidden=16)
  params = random_params(model, (1, 32, 32, 3))
  vgg_model = models.VGG16(num_classes=10, width=WIDTH, pooled_size=2)
  vgg_params = random_params(vgg_model, (1, 32, 32, 3), seed=1)
  images = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
  return model, params, vgg_model, vgg_params, images


def test_ucsh_layout_outputs_and_pretrained_backbone(ucsh_setup):
  model, params, vgg_model, vgg_params, images = ucsh_setup
  assert sorted(params) == ["backbone", "head"]
  assert sorted(params["backbone"]) == sorted(vgg.CONV_NAMES + ("fc6", "fc7"))
  assert sorted(params["head"]) == ["decoder_hidden", "decoder_out", "hash"]

  merged = models.with_pretrained_backbone(params, vgg_params)
  assert "fc8" not in merged["backbone"]
  for layer, layer_params in merged["backbone"].items():
    for name, value in layer_params.items():
      np.testing.assert_array_equal(value, vgg_params[layer][name])
      assert value.dtype == jnp.float32
  assert merged["head"] is params["head"]
  assert params["backbone"]["conv1_1"]["kernel"] is not merged["backbone"]["conv1_1"]["kernel"]

  out = model.apply({"params": merged}, images, train=False)
  assert {k: v.shape for k, v in out.items()} == {
      "features": (2, 256), "similarity_features": (2, 256), "logits": (2, BITS),
      "codes": (2, BITS), "reconstruction": (2, 256)}
  assert all(v.dtype == jnp.float32 for v in out.values())
  np.testing.assert_array_equal(np.abs(out["codes"]), 1.0)
  fc7 = vgg_model.apply({"params": vgg_params}, images, train=False)["fc7"]
  np.testing.assert_allclose(out["features"], fc7, rtol=1e-5, atol=1e-6)
  logits, codes, reconstruction = _numpy_head_eval(merged["head"], np.asarray(fc7))
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["reconstruction"], reconstruction, rtol=1e-4, atol=1e-5)

  train = model.apply({"params": merged}, images, train=True,
                      rngs={"dropout": jax.random.key(0), "sample": jax.random.key(1)})
  assert {k: v.shape for k, v in train.items()} == {k: v.shape for k, v in out.items()}
  shapes = jax.eval_shape(lambda: models.UCSH(bits=BITS, width=WIDTH, dtype=jnp.bfloat16).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))


def test_with_pretrained_backbone_names_mismatches(ucsh_setup):
  _, params, _, vgg_params, _ = ucsh_setup
  wider = random_params(models.VGG16(width=2 * WIDTH, pooled_size=2), (1, 32, 32, 3))
  with pytest.raises(ValueError, match=r"backbone/conv1_1/kernel: pretrained shape "
                     r"\(3, 3, 3, 8\), model shape \(3, 3, 3, 4\)"):
    models.with_pretrained_backbone(params, wider)
  without_fc7 = {k: v for k, v in vgg_params.items() if k != "fc7"}
  with pytest.raises(ValueError, match=r"missing layers \['fc7'\]"):
    models.with_pretrained_backbone(params, without_fc7)
  with pytest.raises(ValueError, match="no 'backbone' entry"):
    models.with_pretrained_backbone({"params": params}, vgg_params)


def _primitive_names(jaxpr):
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      names |= _primitive_names(sub)
  return names


def test_relaxed_head_decodes_tanh_codes_without_sampling_or_sign():
  """UCSH-R: in train mode the codes and the decoder input are tanh(h), nothing sampled."""
  head = models.HashHead(bits=BITS, feature_dim=24, decoder_hidden=16, code_activation="tanh",
                         dropout_rate=0.0)
  params = random_params(head, (1, 24))
  x = np.abs(np.random.default_rng(6).normal(size=(5, 24))).astype(np.float32)
  train = lambda p, v: head.apply({"params": p}, v, train=True,
                                  rngs={"sample": jax.random.key(0)})
  names = _primitive_names(jax.make_jaxpr(train)(params, x).jaxpr)
  assert "tanh" in names
  assert not names & {"random_bits", "random_wrap", "threefry2x32", "sign", "ge", "lt",
                      "select_n", "custom_vjp_call", "custom_vjp_call_jaxpr"}, names
  out = train(params, x)
  logits = x @ params["hash"]["kernel"] + params["hash"]["bias"]
  hidden = np.maximum(np.tanh(logits) @ params["decoder_hidden"]["kernel"]
                      + params["decoder_hidden"]["bias"], 0)
  want = hidden @ params["decoder_out"]["kernel"] + params["decoder_out"]["bias"]
  np.testing.assert_allclose(out["codes"], np.tanh(logits), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["reconstruction"], want, rtol=1e-4, atol=1e-5)


def test_relaxed_l2_and_clustering_gradients_are_the_tanh_chain_rule():
  head = models.HashHead(bits=BITS, feature_dim=24, decoder_hidden=16, code_activation="tanh",
                         dropout_rate=0.0)
  params = random_params(head, (1, 24))
  rng = np.random.default_rng(7)
  x = np.abs(rng.normal(size=(5, 24))).astype(np.float32)
  sim = rng.uniform(-1, 1, size=(5, 5)).astype(np.float32)
  centers = np.where(rng.normal(size=(5, BITS)) >= 0, 1.0, -1.0).astype(np.float32)

  def loss(bias):
    p = {**params, "hash": {**params["hash"], "bias": bias}}
    codes = head.apply({"params": p}, x, train=True)["codes"]
    return (ops.similarity_loss(codes, sim, reduction="sum")
            + ops.clustering_loss(codes, centers, reduction="sum"))

  grad = np.asarray(jax.grad(loss)(params["hash"]["bias"]))
  h = (x @ params["hash"]["kernel"] + params["hash"]["bias"]).astype(np.float64)
  b = np.tanh(h)
  residual = BITS * sim - b @ b.T
  dl_db = -2.0 * (residual + residual.T) @ b + 2.0 * (b - centers)
  np.testing.assert_allclose(grad, (dl_db * (1.0 - b**2)).sum(0), rtol=1e-4, atol=1e-4)


def test_feature_top_starts_as_the_identity_on_relu_features():
  top = models_ucsh.FeatureTop(dropout_rate=0.5)
  x = np.abs(np.random.default_rng(8).normal(size=(6, 10))).astype(np.float32)
  params = top.init(jax.random.key(0), x, train=False)["params"]
  np.testing.assert_array_equal(params["fc"]["kernel"], np.eye(10, dtype=np.float32))
  np.testing.assert_allclose(top.apply({"params": params}, x, train=False), x, rtol=1e-6)
  dropped = top.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
  kept = np.asarray(dropped) != 0
  np.testing.assert_allclose(np.asarray(dropped)[kept], 2.0 * x[kept], rtol=1e-5)
  assert 0 < kept.mean() < 1


def test_similarity_features_are_fc7_without_dropout(ucsh_setup):
  model, params, _, _, images = ucsh_setup
  assert model.dropout_rate == 0.5
  out = model.apply({"params": params}, images, train=False)
  np.testing.assert_array_equal(out["similarity_features"], out["features"])

  def train_out(p):
    return model.apply({"params": p}, images, train=True,
                       rngs={"dropout": jax.random.key(0), "sample": jax.random.key(1)})

  train = train_out(params)
  assert not np.allclose(train["features"], out["features"])  # fc6 was dropped.
  np.testing.assert_allclose(train["similarity_features"], out["features"], rtol=1e-5,
                             atol=1e-6)
  # The separating loss reaches fc7's weights through the dropout-free features.
  grad = jax.grad(lambda p: jnp.sum(ops.pairwise_similarity(
      train_out(p)["similarity_features"])**2))(params)
  assert np.abs(np.asarray(grad["backbone"]["fc7"]["kernel"])).max() > 0
