"""DistillHash (Yang et al., CVPR 2019, arXiv 1905.03465) on the shared step and loop.

  python -m ucsh_jax.main --config=configs/distillhash.py --workdir=runs/distill16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16
  # On a feature file, with the schedule of configs/base.py's "features" setting:
  python -m ucsh_jax.main --config=configs/distillhash.py:features --workdir=runs/distill_feats \
      --config.data.path=/data/cifar_fc7.npz
  # (variants :digits and :finetune take those settings of configs/base.py)

The method is `ucsh_jax.methods.distillhash` (its docstring has the equations and the
decisions): noisy pair labels from SSDH's half-Gaussian threshold(s), the pairs whose local
noisy posterior passes the Bayes-optimal bound distilled once from the first epoch's features,
and the pairwise likelihood loss on them with tanh codes. Its own fields:

  distillhash.labels          "binary": +1 above SSDH's similar threshold, -1 below it;
                              "ssdh": -1 only below SSDH's right threshold, 0 between.
  distillhash.num_neighbours  K: the posterior of (i, j) is estimated over the K x K pairs of
                              their cosine neighbours (each item among its own).
  distillhash.rho_similar     rho_+ = P(noisy -1 | similar): a -1 pair is kept when more than
                              (1 + rho_+) / 2 of its neighbour pairs are -1.
  distillhash.rho_dissimilar  rho_- = P(noisy +1 | dissimilar): a +1 pair is kept when more
                              than (1 + rho_-) / 2 of its neighbour pairs are +1.
  distillhash.scale           Omega_ij = scale u_i . u_j in p(similar) = sigmoid(Omega_ij).
"""

from typing import Optional

import ml_collections

from configs import base


def get_config(variant: Optional[str] = None):
  """DistillHash on images (VGG16, the paper's batch and learning rate), or a variant of base."""
  config = base.get_config(variant)
  config.method = "distillhash"
  config.model.code_activation = "tanh"
  config.model.hash_init = "random"
  config.distillhash = ml_collections.ConfigDict({
      "labels": "binary",
      "num_neighbours": 5,
      "rho_similar": 0.0,
      "rho_dissimilar": 0.0,
      "scale": 1.0 / 32,
  })
  return config
