"""Bi-half (Li and van Gemert, AAAI 2021), on the shared step and loop.

  python -m ucsh_jax.main --config=configs/bihalf.py --workdir=runs/bihalf16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16
  # On a feature file (a hash layer on the fixed vectors, as the authors train it):
  python -m ucsh_jax.main --config=configs/bihalf.py:features --workdir=runs/bihalf_feats \
      --config.data.path=/data/cifar_fc7.npz
  # (variants :digits and :finetune take those settings of configs/base.py)

The loss and the bi-half layer are `ucsh_jax.methods.bihalf`. Its field: `bihalf.gamma`, the
weight of the layer's pull of U towards its codes (the authors' 6).

Schedules. The authors' script trains the hash layer alone on a frozen VGG16 with SGD (lr 1e-4,
momentum 0.9, weight decay 5e-4), batch 32, 300 epochs, the rate divided by 10 after epoch
120. Images (no variant): exactly that, the VGG16 frozen (`optimizer.feature_lr_scale = 0`).
Feature files (:features): the hash layer straight on the vectors (no trainable top, torch's
initialisation) with the same schedule: 300 epochs (31 steps an epoch on 1,000 training items,
9,300 steps), lr 1e-4 then 1e-5 from epoch 120; about 20 s a run on a CPU. (A larger rate
gains little on the dev features and 1e-2 diverges.)
Dev features (MAP@1000, seeds 0-2, 16/32/64 bits): 0.122 +- 0.001 / 0.131 +- 0.001 /
0.144 +- 0.001, below LSH, as a loop written separately from the authors' script gives on
the same data (0.125 / 0.134 / 0.146, seed 0).
"""

from typing import Optional

import ml_collections

from configs import base
from configs import greedyhash

FEATURE_EPOCHS = 300
FEATURE_LEARNING_RATE = 1e-4


def get_config(variant: Optional[str] = None):
  """Bi-half on images (frozen VGG16, the authors' schedule), or a variant of base."""
  config = base.get_config(variant)
  config.method = "bihalf"
  config.bihalf = ml_collections.ConfigDict()
  config.bihalf.gamma = 6.0  # gamma of the backward's extra term gamma (U - B) / (N k).
  greedyhash.apply_schedule(config, variant, FEATURE_EPOCHS, FEATURE_LEARNING_RATE)
  if not variant or variant == "features":
    config.num_epochs = 300 if not variant else FEATURE_EPOCHS
    config.optimizer.decay_every_epochs = 120
    config.optimizer.decay_factor = 0.1
  return config
