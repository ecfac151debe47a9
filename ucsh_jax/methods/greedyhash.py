"""GreedyHash, unsupervised (Su, Chen, Wang, Zhang, Tian, NeurIPS 2018: "Greedy Hash: Towards
Fast Optimization for Accurate Hash Coding in CNN"), as the authors' unsupervised script
(github.com/ssppp/GreedyHash, unsupervised_vgg.py) and cisip-FIRe's port
(functions/loss/greedyhash.py, GreedyHashUnsupervisedLoss) train it.

Network: a linear hash layer h = W x + b (k outputs) on the features x (the authors': fc7 of a
frozen VGG16, fc_encode = nn.Linear(4096, k)); codes b = sign(h) in the forward pass with the
gradient passed straight through (dL/dh = dL/db, the paper's "greedy" update; `ops.sign_ste`).
Evaluation codes are sign(h), as in the authors' `compress`.

Loss on the global batch of N (all devices; rows in the global batch's order):

  L = 1/P sum_{i<P} (cos(b_i, b_{i+P}) - cos(x_i, x_{i+P}))^2          (`ops.cosine_pair_loss`)
      + alpha * 1/(N k) sum_{n,j} | |h_nj| - 1 |^3                       (`ops.cubic_penalty`)

with P = N // 2 (the first half of the batch paired with the second half), the features'
cosines a fixed target (no gradient), and alpha = 0.1 (`config.greedyhash.alpha`; the authors'
CIFAR-10 script; cisip-FIRe's template says 1 in general, "0.1 for cifar10").

Decisions (what the paper or the code leave open, or where this differs):
  * x of the target is the step's dropout-free features ("similarity_features"). The authors'
    x is fc7 after VGG's train-mode dropout (the same dropped vector the hash layer sees);
    on feature files (no dropout) the two agree.
  * sign(0) = +1 (torch.sign gives 0; measure zero for a float h).
  * With an odd global batch the last row is left out of the pairs (cisip-FIRe's rule); the
    cubic penalty still covers every row.
  * The hash layer starts like torch's nn.Linear: kernel and bias uniform in +-1/sqrt(d)
    (`model.hash_init = "itq"` replaces it with ITQ).
  * Schedules (configs/greedyhash.py): the authors train fc_encode alone (VGG16 frozen) with
    SGD, lr 1e-4, momentum 0.9, weight decay 5e-4, batch 32, 60 epochs of CIFAR-10's 50,000
    images (300 at 16 bits): the image variant keeps that with the VGG16 frozen
    (feature_lr_scale 0) and 60 epochs at every length; the feature-file variant keeps the
    optimiser at 3x the rate (3e-4) for 1,000 epochs of its 1,000 items, so that lr x steps
    (31,000 x 3e-4) matches the authors' 32- and 64-bit runs (93,780 x 1e-4).
"""

from typing import Any, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import errors
from ucsh_jax import ops
from ucsh_jax.methods import base
from ucsh_jax.parallel import DATA_AXIS


def torch_linear_init(fan_in: int):
  """(kernel_init, bias_init) of torch's nn.Linear: both uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / np.sqrt(fan_in)

  def uniform(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return uniform, uniform


class LinearHashHead(nn.Module):
  """h = W dropout(x) + b (Dense "hash", d -> bits); {"logits": h, "codes": sign_ste(h)}.

  The hash layer of GreedyHash and Bi-half (and the authors' fc_encode); `code_noise` is
  accepted for the shared call signature and unused.
  """

  bits: int
  feature_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool,
               code_noise: Optional[jax.Array] = None):
    del code_noise
    if features.ndim != 2 or features.shape[1] != self.feature_dim:
      raise ValueError(f"LinearHashHead expects features of shape (n, {self.feature_dim}), "
                       f"got {features.shape}")
    kernel_init, bias_init = torch_linear_init(self.feature_dim)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(features.astype(self.dtype))
    logits_NxK = nn.Dense(self.bits, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=kernel_init, bias_init=bias_init,
                          name="hash")(x).astype(jnp.float32)
    return {"logits": logits_NxK, "codes": ops.sign_ste(logits_NxK)}


def check_batch(config) -> None:
  """The pairs need a global batch of at least 2."""
  if config.batch_size < 2:
    raise errors.UserError(f"config.batch_size={config.batch_size}: config.method="
                           f"{config.method!r} pairs the two halves of a batch, so it needs "
                           "at least 2")


def gathered_outputs(params, batch, context: base.Context):
  """(features x (N, d) without dropout, hash-layer outputs h (N, k)) of the global batch, in
  its order (device slices concatenated)."""
  inputs = batch["image"] if "image" in batch else batch["features"]
  out = context.model.apply({"params": params}, inputs, train=True,
                            rngs={"dropout": base.dropout_key(context.key, context.step)})
  features_NxD = lax.all_gather(out["similarity_features"], DATA_AXIS, tiled=True)
  logits_NxK = lax.all_gather(out["logits"], DATA_AXIS, tiled=True)
  return features_NxD, logits_NxK


def greedyhash_loss(features_NxD: jax.Array, logits_NxK: jax.Array, alpha: float):
  """(L, the cosine term, the cubic penalty) of the global batch (module docstring)."""
  codes_NxK = ops.sign_ste(logits_NxK)
  cosine = ops.cosine_pair_loss(codes_NxK, features_NxD)
  cubic = ops.cubic_penalty(logits_NxK)
  return cosine + alpha * cubic, cosine, cubic


class GreedyHash(base.Method):
  """GreedyHash's unsupervised objective: a linear hash layer, sign with a straight-through
  gradient, codes' pair cosines against the features', a cubic penalty."""

  name = "greedyhash"
  title = "GreedyHash"
  source = "Su et al., NeurIPS 2018"

  @classmethod
  def validate(cls, config) -> None:
    alpha = config.greedyhash.alpha
    if not (np.isfinite(alpha) and alpha >= 0):
      raise errors.UserError(f"config.greedyhash.alpha={alpha!r}: the weight of the cubic "
                             "penalty must be a finite number >= 0 (the authors' 0.1)")
    check_batch(config)

  @classmethod
  def make_head(cls, config, feature_dim, dtype, dropout_rate):
    return LinearHashHead(bits=config.bits, feature_dim=feature_dim, dropout_rate=dropout_rate,
                          dtype=dtype)

  def losses(self, params, batch, context):
    features_NxD, logits_NxK = gathered_outputs(params, batch, context)
    loss, cosine, cubic = greedyhash_loss(features_NxD, logits_NxK,
                                          self.config.greedyhash.alpha)
    loss, cosine, cubic = base.same_on_all_devices((loss, cosine, cubic))
    return {base.MAIN_GROUP: loss}, {"loss": loss, "loss_cosine": cosine, "loss_cubic": cubic}
