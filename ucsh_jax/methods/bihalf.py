"""Bi-half (Li and van Gemert, AAAI 2021: "Deep Unsupervised Image Hashing by Maximizing Bit
Entropy", arXiv 2012.12334), as the authors' code (github.com/liyunqianggyn/
Deep-Unsupervised-Image-Hashing, ImageHashing/Cifar10_I.py) and cisip-FIRe's port
(models/layers/bihalf.py, functions/loss/bihalf.py) train it.

Network: GreedyHash's linear hash layer U = W x + b (k outputs; `greedyhash.LinearHashHead`)
on the features x (the authors': fc7 of a frozen VGG16). In training the codes are the bi-half
layer's B = `ops.bi_half(U)` over the GLOBAL batch (all devices): per bit, the half of the
batch with the largest U gets +1, the other half -1, so every bit is +1 for exactly half the
batch (maximum bit entropy). At evaluation the codes are sign(U), as in the authors' `compress`.

Loss on the global batch of N (rows in the global batch's order), P = N // 2:

  L = 1/P sum_{i<P} (cos(B_i, B_{i+P}) - cos(x_i, x_{i+P}))^2          (`ops.cosine_pair_loss`)
      + gamma / (2 N k) ||U - stop(B)||^2                                (`ops.bi_half_penalty`)

The gradient reaching U is therefore dL/dB + gamma (U - B) / (N k): the authors' bi-half
backward (`grad = g + gamma * (U - B) / B.numel()`), gamma = 6 (`config.bihalf.gamma`).

Decisions (what the paper or the code leave open, or where this differs):
  * The authors' extra gradient term is written as the penalty above rather than inside the
    layer's backward pass, so that with the batch split over devices it is added once for the
    global batch (a backward that adds it would add it once per device); the gradient is the
    same, and the logged loss includes the penalty ("loss_penalty" alone).
  * Ties within a bit's column go +1 to the lower row of the global batch (the authors' CUDA
    sort leaves them unspecified); with an odd N, floor(N/2) rows get +1 (the authors' int(N/2)).
  * x of the target is the step's dropout-free features, as for GreedyHash (the authors' x is
    fc7 after VGG's train-mode dropout); identical on feature files.
  * The hash layer starts like torch's nn.Linear (uniform in +-1/sqrt(d)).
  * Schedules (configs/bihalf.py): the authors train fc_encode alone (VGG16 frozen) with SGD,
    lr 1e-4, momentum 0.9, weight decay 5e-4, batch 32, 300 epochs with the rate divided by
    10 after epoch 120; both the image and the feature-file variants keep that.
"""

import numpy as np

from ucsh_jax import errors
from ucsh_jax import ops
from ucsh_jax.methods import base
from ucsh_jax.methods import greedyhash


def bihalf_loss(features_NxD, logits_NxK, gamma: float):
  """(L, the cosine term, the bi-half penalty) of the global batch (module docstring)."""
  codes_NxK = ops.bi_half(logits_NxK)
  cosine = ops.cosine_pair_loss(codes_NxK, features_NxD)
  penalty = ops.bi_half_penalty(logits_NxK, codes_NxK, gamma)
  return cosine + penalty, cosine, penalty


class BiHalf(base.Method):
  """Bi-half: a linear hash layer, the bi-half layer over the global batch with a
  straight-through gradient plus gamma (U - B) / (N k), codes' pair cosines against the
  features'."""

  name = "bihalf"
  title = "Bi-half"
  source = "Li and van Gemert, AAAI 2021"

  @classmethod
  def validate(cls, config) -> None:
    gamma = config.bihalf.gamma
    if not (np.isfinite(gamma) and gamma >= 0):
      raise errors.UserError(f"config.bihalf.gamma={gamma!r}: the weight of the bi-half "
                             "layer's pull of U towards B must be a finite number >= 0 (the "
                             "authors' 6)")
    greedyhash.check_batch(config)

  @classmethod
  def make_head(cls, config, feature_dim, dtype, dropout_rate):
    return greedyhash.LinearHashHead(bits=config.bits, feature_dim=feature_dim,
                                     dropout_rate=dropout_rate, dtype=dtype)

  def losses(self, params, batch, context):
    features_NxD, logits_NxK = greedyhash.gathered_outputs(params, batch, context)
    loss, cosine, penalty = bihalf_loss(features_NxD, logits_NxK, self.config.bihalf.gamma)
    loss, cosine, penalty = base.same_on_all_devices((loss, cosine, penalty))
    return {base.MAIN_GROUP: loss}, {"loss": loss, "loss_cosine": cosine,
                                     "loss_penalty": penalty}
