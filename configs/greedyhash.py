"""GreedyHash, unsupervised (Su et al., NeurIPS 2018), on the shared step and loop.

  python -m ucsh_jax.main --config=configs/greedyhash.py --workdir=runs/greedy16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16
  # On a feature file (a hash layer on the fixed vectors, as the authors train it):
  python -m ucsh_jax.main --config=configs/greedyhash.py:features --workdir=runs/greedy_feats \
      --config.data.path=/data/cifar_fc7.npz
  # (variants :digits and :finetune take those settings of configs/base.py)

The loss and the network are `ucsh_jax.methods.greedyhash`. Its field: `greedyhash.alpha`,
the weight of the cubic penalty (the authors' CIFAR-10 script: 0.1).

Schedules. The authors' script trains the hash layer alone on a frozen VGG16 with SGD (lr 1e-4,
momentum 0.9, weight decay 5e-4), batch 32, for 60 epochs of 50,000 images (93,780 steps; 300
epochs, 468,900 steps, at 16 bits). Images (no variant): that optimiser and batch, the VGG16
frozen (`optimizer.feature_lr_scale = 0`), 60 epochs. Feature files (:features): the hash
layer straight on the vectors (no trainable top, torch's initialisation), the same optimiser
and batch at lr 3e-4 (3x the authors') for 1,000 epochs: on 1,000 training items (31 steps an
epoch) lr x steps = 31,000 x 3e-4 = 9.3, the authors' 93,780 x 1e-4 = 9.4 at 32 and 64 bits,
in under a minute a run on a CPU. (lr 1e-3 diverges at 16 bits on the dev features, whose
values reach 150: the cubic penalty's gradient grows with |h|^2.)
Dev features (MAP@1000, seeds 0-2, 16/32/64 bits): 0.194 +- 0.002 / 0.187 +- 0.003 /
0.187 +- 0.002, 45-100 s a run on a loaded 2-core machine.
"""

from typing import Optional

import ml_collections

from configs import base

# The feature-file schedule (module docstring).
FEATURE_EPOCHS = 1000
FEATURE_LEARNING_RATE = 3e-4


def authors_optimizer(config: ml_collections.ConfigDict, learning_rate: float) -> None:
  """The authors' SGD: momentum 0.9, weight decay 5e-4 (coupled, as torch's), batch 32,
  constant rate; the hash layer starts at random (torch's nn.Linear initialisation)."""
  config.batch_size = 32
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = learning_rate
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_every_epochs = 100000  # Constant.
  config.model.hash_init = "random"


def apply_schedule(config: ml_collections.ConfigDict, variant: Optional[str],
                   feature_epochs: int, feature_learning_rate: float) -> None:
  """The authors' optimiser on every variant; what else each variant changes (the docstrings
  of configs/greedyhash.py and configs/bihalf.py)."""
  if not variant:
    authors_optimizer(config, 1e-4)
    config.optimizer.feature_lr_scale = 0.0  # The authors' VGG16 is frozen.
    return
  authors_optimizer(config, feature_learning_rate)
  if variant == "features":
    config.num_epochs = feature_epochs
    config.model.top = "none"  # The hash layer on the vectors themselves.
  elif variant == "digits":
    config.model.top = "none"  # The hash layer on the pixels.


def get_config(variant: Optional[str] = None):
  """GreedyHash on images (frozen VGG16, the authors' optimiser), or a variant of base."""
  config = base.get_config(variant)
  config.method = "greedyhash"
  config.greedyhash = ml_collections.ConfigDict()
  config.greedyhash.alpha = 0.1  # Weight of the cubic penalty mean ||h| - 1|^3.
  apply_schedule(config, variant, FEATURE_EPOCHS, FEATURE_LEARNING_RATE)
  if not variant:
    config.num_epochs = 60  # The authors' (300 at 16 bits).
  return config
