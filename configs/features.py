"""Precomputed features: the backbone is skipped; the hash layer and decoder train on vectors.

  python -m ucsh_jax.main --config=configs/features.py --workdir=runs/feats \
      --config.data.path=/data/cifar_fc7.npz

The `.npz` holds `features` (n, d) float and `labels` (n,) ints or (n, c) multi-hot, and
optionally `query_idx`, `database_idx`, `train_idx` (then those splits are used).
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.num_epochs = 20
  config.batch_size = 256
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay_every_epochs = 15
  config.data.name = "features"
  config.data.num_workers = 0
  config.eval.batch_size = 1024
  config.checkpoint_every_steps = 1000
  return config
