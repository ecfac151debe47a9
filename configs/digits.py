"""The built-in demo: scikit-learn's 1,797 handwritten digits, no download, a few CPU minutes.

  python -m ucsh_jax.main --config=configs/digits.py --workdir=runs/digits

The hash layer and the VAE decoder train on the flattened 8x8 pixels (`model.backbone =
"none"`) behind a trainable top, with the options of `configs/features.py`: the hash layer
starts as ITQ, L_2's targets are cosine neighbour ranks, no clustering term. 300 queries, the
other 1,497 images as the database, 1,000 of them for training. Same losses and epoch loop as
the paper's configs.
"""

from configs import base
from configs import cifar


def get_config():
  config = cifar.get_config()
  base.use_digits(config)
  config.num_clusters = 10
  config.loss.beta = 0.0
  config.similarity.target = "neighbours"
  return config
