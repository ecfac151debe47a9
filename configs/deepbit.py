"""DeepBit (Lin et al., CVPR 2016), Table 1's first deep row, on the shared step and loop.

  python -m ucsh_jax.main --config=configs/deepbit.py --workdir=runs/deepbit16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16
  # The dev images through the Keras notop conv base (configs/finetune.py's setting):
  python -m ucsh_jax.main --config=configs/deepbit.py:finetune --workdir=runs/deepbit_ft \
      --config.model.pretrained=/path/to/vgg16_conv_notop.h5
  # The built-in digits (no download):
  python -m ucsh_jax.main --config=configs/deepbit.py:digits --workdir=runs/deepbit_digits

DeepBit rotates the images, so it needs an image data set (a feature file is refused) and
trains through the whole network (no frozen-prefix cache: the frozen layers run every step).
Its terms and decisions are `ucsh_jax.methods.deepbit`. Its own fields (config.deepbit):

  quantization_weight  alpha of L1, the quantisation loss (the authors' 1)
  balance_weight       beta of L2, the even bit distribution (the authors' 1)
  rotation_weight      gamma of L3, rotation invariance (the authors' loss weight 0.001)
  angles               the rotations theta, in degrees (the authors' -10, -5, 0, 5, 10)
  angle_sigma          C(theta) = exp(-theta^2 / (2 sigma^2)), sigma in degrees (the authors' 5)
  rotation_from_epoch  the epoch where L3 joins (the authors' second stage: its last ~10%)
"""

from typing import Optional

import ml_collections

from configs import base


def get_config(variant: Optional[str] = None):
  """DeepBit on CIFAR-10 images (VGG16 fc7, the shared schedule), or a variant of base."""
  config = base.get_config(variant)
  config.method = "deepbit"
  config.model.hash_init = "random"  # The authors' Gaussian(0, 0.01) hash layer.
  config.deepbit = ml_collections.ConfigDict({
      "quantization_weight": 1.0,
      "balance_weight": 1.0,
      "rotation_weight": 0.001,
      "angles": (-10.0, -5.0, 0.0, 5.0, 10.0),
      "angle_sigma": 5.0,
      # Stage 1 (L1 + L2) for 45 of the 50 epochs, as the authors' 50,000 + 5,000 iterations.
      "rotation_from_epoch": 45,
  })
  if variant in ("digits", "finetune"):
    # No dropout in these settings: theta = 0 compares an image with itself (L3 term 0).
    config.deepbit.angles = (-10.0, -5.0, 5.0, 10.0)
    config.deepbit.rotation_from_epoch = config.num_epochs * 9 // 10
  return config
