"""SSDH (Yang et al., IJCAI 2018), the paper's strongest deep baseline, on UCSH's step and loop.

  python -m ucsh_jax.main --config=configs/ssdh.py --workdir=runs/ssdh16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16
  # On a feature file, with the schedule of configs/features.py:
  python -m ucsh_jax.main --config=configs/ssdh.py:features --workdir=runs/ssdh_feats \
      --config.data.path=/data/cifar_fc7.npz
  # (or --config.data.name=features --config.data.path=... with the image schedule)

SSDH's pairwise targets come from the two half-Gaussian thresholds of the cosine distances
(the estimate UCSH borrows for s_t): S_ij = +1 when d_ij < m - 2 sigma_left, -1 when
d_ij > m + 2 sigma_right, 0 (ignored) between; the loss is sum_ij |S_ij| (S_ij - b_i . b_j /
k)^2 with tanh codes, i.e. L_2 restricted to the |S| = 1 pairs, and nothing else (no VAE, no
clustering, no separating term). The thresholds are re-estimated every epoch and S is computed
per batch from the step's features, like UCSH's; with fixed features it is SSDH's fixed S.
"""

from typing import Optional

from configs import cifar
from configs import features


def get_config(variant: Optional[str] = None):
  """SSDH on images (VGG16, the paper's batch and learning rate), or variant "features"."""
  if variant not in (None, "", "features"):
    raise ValueError(f"configs/ssdh.py takes no variant or 'features', got {variant!r}")
  config = features.get_config() if variant == "features" else cifar.get_config()
  config.similarity.target = "ssdh"
  config.loss.alpha = 0.0
  config.loss.beta = 0.0
  config.loss.gamma = 0.0
  config.model.code_activation = "tanh"
  config.model.hash_init = "random"
  return config
