"""SSDH (Yang et al., IJCAI 2018), the paper's strongest deep baseline, on the shared step and loop.

  python -m ucsh_jax.main --config=configs/ssdh.py --workdir=runs/ssdh16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16
  # On a feature file, with the schedule of configs/features.py:
  python -m ucsh_jax.main --config=configs/ssdh.py:features --workdir=runs/ssdh_feats \
      --config.data.path=/data/cifar_fc7.npz
  # (or --config.data.name=features --config.data.path=... with the image schedule;
  # variants :digits and :finetune take those settings of configs/base.py)

SSDH's targets and loss are `ucsh_jax.methods.ssdh`: +1 / 0 / -1 pairs from the two
half-Gaussian thresholds of the cosine distances (re-estimated every epoch), L_2 on the |S| = 1
pairs with tanh codes, nothing else. SSDH has no fields of its own.
"""

from typing import Optional

from configs import base


def get_config(variant: Optional[str] = None):
  """SSDH on images (VGG16, the paper's batch and learning rate), or a variant of base."""
  config = base.get_config(variant)
  config.method = "ssdh"
  config.model.code_activation = "tanh"
  config.model.hash_init = "random"
  return config
