"""Precomputed features: a trainable top (the role of fc7) and the hash layer train on vectors.

  python -m ucsh_jax.main --config=configs/features.py --workdir=runs/feats \
      --config.data.path=/data/cifar_fc7.npz

The `.npz` holds `features` (n, d) float and `labels` (n,) ints or (n, c) multi-hot, and
optionally `query_idx`, `database_idx`, `train_idx` (then those splits are used).

What this config changes from the paper's method, each a named option (README, "Fixed
features"): the hash layer starts as ITQ of the training features (`model.hash_init`), a
trainable top relu(W x + b) with W = I adapts the features at a tenth of the learning rate
(`model.top`, `optimizer.feature_lr_scale`), L_2's targets are cosine neighbour ranks
recomputed every epoch from the top's eval-mode output (`similarity.target`), and the
clustering term is off (`loss.beta = 0`). `--config.similarity.target=cosine
--config.loss.beta=10` gives the paper's objective on the same network.
"""

from configs import base
from configs import cifar


def get_config():
  config = cifar.get_config()
  base.use_features(config)
  config.loss.beta = 0.0
  config.similarity.target = "neighbours"
  return config
