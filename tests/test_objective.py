"""The composed objective (eq. 7) against NumPy, written here from the paper's equations.

The step's loss on the features model with a trainable top (top -> hash layer -> codes, and the
VAE decoder) is recomputed in float64 from the parameters: every term, the weighted total for
each ablation and both balances, and the full gradient by a hand-written backward pass (the
straight-through sign, the decoder's straight-through sample, L_S through the cosines into the
top). Nothing here calls `ucsh_jax.ops`.
"""

import functools

import jax
import numpy as np
import pytest

from configs import cifar
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import parallel
from ucsh_jax.methods import ucsh as ucsh_method

P = jax.sharding.PartitionSpec
FEATURE_DIM, HIDDEN, BITS, CLUSTERS = 12, 20, 16, 6
# Distinct weights, so that swapping two of them changes the total.
ALPHA, BETA, GAMMA = 0.7, 0.3, 2.0
THRESHOLD = 0.25
ABLATIONS = ["", "V", "C", "S", "R"]


def _config(ablation, balance):
  config = cifar.get_config()
  config.bits, config.ablation = BITS, ablation
  config.data.name, config.model.top = "features", "fc"
  config.model.dropout_rate = 0.0  # The NumPy forward below has no dropout.
  config.model.decoder_hidden = HIDDEN
  config.loss.alpha, config.loss.beta, config.loss.gamma = ALPHA, BETA, GAMMA
  config.loss.balance = balance
  return config


def _inputs(batch_size, seed=0):
  """A batch of non-negative features, per-example hash centers, and perturbed parameters."""
  config = _config("", "paper")
  model = experiment.build_model(config, feature_dim=FEATURE_DIM)
  rng = np.random.default_rng(seed)
  centers = np.where(rng.normal(size=(CLUSTERS, BITS)) >= 0, 1.0, -1.0).astype(np.float32)
  batch = {
      "features": np.abs(rng.normal(size=(batch_size, FEATURE_DIM))).astype(np.float32),
      "index": rng.permutation(100)[:batch_size].astype(np.int32),
      "center": centers[rng.integers(0, CLUSTERS, batch_size)],
  }
  params = jax.device_get(experiment.init_params(model, config, batch["features"][:1],
                                                 jax.random.key(seed), None))
  # Move the top off the identity, so that the features (and s_ij) depend on its parameters.
  top = params["top"]["fc"]
  top["kernel"] = (top["kernel"] + 0.2 * rng.normal(size=top["kernel"].shape)).astype(np.float32)
  top["bias"] = (0.05 * rng.normal(size=top["bias"].shape)).astype(np.float32)
  return batch, params


def _sigmoid(h):
  return 1.0 / (1.0 + np.exp(-h))


def _numpy_forward(params, batch, noise, relaxed):
  """Everything of the model's train-mode forward pass in float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  f = np.asarray(batch["features"], np.float64)
  pre = f @ p["top"]["fc"]["kernel"] + p["top"]["fc"]["bias"]
  x = np.maximum(pre, 0.0)  # The top: relu(W f + b).
  h = x @ p["head"]["hash"]["kernel"] + p["head"]["hash"]["bias"]  # Logits.
  if relaxed:  # UCSH-R: b = tanh(h), and the decoder gets tanh(h) too.
    b = z = np.tanh(h)
  else:  # b = sign(h), sign(0) = +1; the decoder gets a Bernoulli(sigmoid(h)) draw as +-1.
    b = np.where(h >= 0, 1.0, -1.0)
    z = np.where(noise < _sigmoid(h), 1.0, -1.0)
  a = z @ p["head"]["decoder_hidden"]["kernel"] + p["head"]["decoder_hidden"]["bias"]
  r = np.maximum(a, 0.0)
  xhat = r @ p["head"]["decoder_out"]["kernel"] + p["head"]["decoder_out"]["bias"]
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  u = x / norm
  s = 2.0 * (u @ u.T) - 1.0  # eq. 2: s_ij = 2 cos(x_i, x_j) - 1.
  return dict(p=p, f=f, pre=pre, x=x, h=h, b=b, z=z, a=a, r=r, xhat=xhat, norm=norm, u=u, s=s,
              noise=noise)


def _literal_sums(fw, centers):
  """The paper's literal sums: L_2 (eq. 3), L_V = L_rec + L_kl (eq. 1), L_C (eq. 5), L_S (eq. 6)."""
  k = fw["b"].shape[1]
  prob = _sigmoid(fw["h"])
  return {
      "l2": np.sum((k * fw["s"] - fw["b"] @ fw["b"].T)**2),
      "reconstruction": np.sum((fw["x"] - fw["xhat"])**2),
      "kl": np.sum(prob * np.log(prob) + (1 - prob) * np.log(1 - prob) + np.log(2.0)),
      "clustering": np.sum((fw["b"] - centers)**2),
      "separating": -np.sum((fw["s"] - THRESHOLD)**2),
  }


def _coefficients(ablation, balance, n):
  """T = sum of coefficient * literal sum, from eq. 7's alpha, beta, gamma after the ablation.

  "paper": (L_2 + a L_V + b L_C + g L_S) / (n0^2 k^2) at the reference batch n0 = 24; at
  another n the pairwise sums (n^2 pairs) are divided by n^2 k^2 and the per-example ones by
  n n0 k^2, so the terms keep the balance they have at n0. "mean": a, b, g weight the means.
  """
  alpha = 0.0 if ablation == "V" else ALPHA
  beta = 0.0 if ablation == "C" else BETA
  gamma = 0.0 if ablation == "S" else GAMMA
  k, d, n0 = BITS, FEATURE_DIM, 24
  if balance == "paper":
    pairwise, per_example = 1.0 / (n * n * k * k), 1.0 / (n * n0 * k * k)
    return {"l2": pairwise, "separating": gamma * pairwise, "reconstruction": alpha * per_example,
            "kl": alpha * per_example, "clustering": beta * per_example}
  return {"l2": 1.0 / (n * n * k * k), "reconstruction": alpha / (n * d), "kl": alpha / (n * k),
          "clustering": beta / (n * k), "separating": gamma / (n * n)}


def _numpy_gradient(fw, centers, coef, relaxed):
  """d total / d params by hand: chain rule through the decoder, the codes and the cosines."""
  p, k = fw["p"], fw["b"].shape[1]
  prob = _sigmoid(fw["h"])
  # Codes: L_2 (targets S stop-gradient) and L_C (centers stop-gradient).
  residual = k * fw["s"] - fw["b"] @ fw["b"].T
  g_b = (coef["l2"] * -2.0 * (residual + residual.T) @ fw["b"]
         + coef["clustering"] * 2.0 * (fw["b"] - centers))
  tanh_slope = 1.0 - np.tanh(fw["h"])**2
  g_h = g_b * tanh_slope if relaxed else g_b  # The sign's straight-through gradient is 1.
  g_h = g_h + coef["kl"] * prob * (1 - prob) * fw["h"]  # d KL / d h = p (1 - p) h.
  # Decoder (the reconstruction target x is stop-gradient).
  g_xhat = coef["reconstruction"] * -2.0 * (fw["x"] - fw["xhat"])
  grads = {"decoder_out": {"kernel": fw["r"].T @ g_xhat, "bias": g_xhat.sum(0)}}
  g_a = (g_xhat @ p["head"]["decoder_out"]["kernel"].T) * (fw["a"] > 0)
  grads["decoder_hidden"] = {"kernel": fw["z"].T @ g_a, "bias": g_a.sum(0)}
  g_z = g_a @ p["head"]["decoder_hidden"]["kernel"].T
  # The sample's straight-through gradient goes to its mean 2 sigmoid(h) - 1.
  g_h = g_h + g_z * (tanh_slope if relaxed else 2.0 * prob * (1 - prob))
  grads["hash"] = {"kernel": fw["x"].T @ g_h, "bias": g_h.sum(0)}
  # Features: through the hash layer, and through s = 2 u u^T - 1 (L_S only; L_2's S is fixed).
  g_x = g_h @ p["head"]["hash"]["kernel"].T
  g_s = coef["separating"] * -2.0 * (fw["s"] - THRESHOLD)
  g_u = 2.0 * (g_s + g_s.T) @ fw["u"]
  g_x_separating = (g_u - fw["u"] * np.sum(fw["u"] * g_u, axis=1, keepdims=True)) / fw["norm"]
  g_pre = (g_x + g_x_separating) * (fw["pre"] > 0)
  top = {"kernel": fw["f"].T @ g_pre, "bias": g_pre.sum(0)}
  top_separating = fw["f"].T @ (g_x_separating * (fw["pre"] > 0))
  return {"top": {"fc": top}, "head": grads}, top_separating


@functools.lru_cache(maxsize=None)
def _step_loss(relaxed):
  """The step's (loss, terms) on one device and its gradient with respect to the params.

  The loss weights are an argument (traced), so one compilation serves every ablation but R
  (another model) and both balances.
  """
  model = experiment.build_model(_config("R" if relaxed else "", "paper"),
                                 feature_dim=FEATURE_DIM)
  mesh = parallel.make_mesh(jax.devices()[:1])
  fn = jax.shard_map(
      lambda p, b, t, k, w: ucsh_method.ucsh_losses(p, b, t, k, 0, model=model, weights=w),
      mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P(), P(), P()), out_specs=(P(), P()))
  fn = jax.jit(jax.value_and_grad(fn, has_aux=True))

  def run(params, batch, threshold, key, weights):
    replicated = [parallel.replicate(mesh, a)
                  for a in (params, threshold, key, jax.tree.map(np.float32, weights))]
    return jax.device_get(fn(replicated[0], parallel.global_batch(mesh, batch), *replicated[1:]))

  return run


def _check_margins(fw, relaxed):
  """No quantity whose sign or order decides a branch is within float32 rounding of it."""
  assert np.abs(fw["pre"]).min() > 1e-4 and np.abs(fw["a"]).min() > 1e-4
  if not relaxed:
    assert np.abs(fw["h"]).min() > 1e-4
    assert np.abs(fw["noise"] - _sigmoid(fw["h"])).min() > 1e-4


@pytest.mark.parametrize("batch_size", [24, 16])
@pytest.mark.parametrize("balance", ["paper", "mean"])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_step_objective_and_gradient_equal_the_paper_written_in_numpy(ablation, balance,
                                                                      batch_size):
  """Each term, the total and the gradient of every parameter, for each ablation and balance,
  at the paper's batch (24) and another (16)."""
  config = _config(ablation, balance)
  batch, params = _inputs(batch_size)
  key = jax.random.key(3)
  relaxed = ablation == "R"
  # The step's per-example noise of the decoder's Bernoulli sample, at step 0.
  noise = np.asarray(methods.base.code_noise(key, 0, batch["index"], BITS), np.float64)
  fw = _numpy_forward(params, batch, noise, relaxed)
  _check_margins(fw, relaxed)
  centers = np.asarray(batch["center"], np.float64)
  sums = _literal_sums(fw, centers)
  coef = _coefficients(ablation, balance, batch_size)

  (total, terms), grads = _step_loss(relaxed)(params, batch, np.float32(THRESHOLD), key,
                                              ucsh_method.loss_weights(config, FEATURE_DIM))

  n, k, d = batch_size, BITS, FEATURE_DIM
  means = {"loss_l2": sums["l2"] / (n * n * k * k),
           "loss_reconstruction": sums["reconstruction"] / (n * d),
           "loss_kl": sums["kl"] / (n * k),
           "loss_clustering": sums["clustering"] / (n * k),
           "loss_separating": sums["separating"] / (n * n)}
  means["loss_vae"] = means["loss_reconstruction"] + means["loss_kl"]
  for name, want in means.items():
    np.testing.assert_allclose(terms[name], want, rtol=1e-5, err_msg=name)
  want_total = sum(coef[name] * value for name, value in sums.items())
  np.testing.assert_allclose(total, want_total, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], total, rtol=1e-6)

  want_grads, top_separating = _numpy_gradient(fw, centers, coef, relaxed)
  assert jax.tree.structure(grads) == jax.tree.structure(want_grads)
  for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads),
                               jax.tree.leaves(want_grads)):
    scale = np.abs(want).max()
    if scale == 0:  # The decoder's under UCSH-V.
      assert ablation == "V" and not got.any(), path
      continue
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=str(path))
  # L_S reaches the top, by ten times the tolerance above (so a stopped L_S gradient fails).
  top_scale = np.abs(want_grads["top"]["fc"]["kernel"]).max()
  if ablation != "S":
    assert np.abs(top_separating).max() > 1e-3 * top_scale
  else:
    assert np.abs(top_separating).max() == 0.0
