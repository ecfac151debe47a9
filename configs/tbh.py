"""TBH (Shen et al., CVPR 2020): the twin-bottleneck auto-encoder and its two critics
(`ucsh_jax.methods.tbh`), with the authors' optimisers: Adam at 1e-4 for the auto-encoder
and for the discriminators, constant.

  # On a feature file (the authors' setting: the head on fixed fc7-like features), batch 400:
  python -m ucsh_jax.main --config=configs/tbh.py:features --workdir=runs/tbh_feats \
      --config.data.path=/data/cifar_fc7.npz --config.bits=32
  # The digits demo (no download), or VGG16 on CIFAR-10 images (variant none / finetune):
  python -m ucsh_jax.main --config=configs/tbh.py:digits --workdir=/tmp/tbh_digits

Measured on the dev features (benchmarks.quality, MAP@1000, seeds 0-2, :features, 2,000 steps
of batch 400): 0.225 +- 0.013 / 0.240 +- 0.016 / 0.246 +- 0.017 at 16 / 32 / 64 bits (the
authors' code ported to torch, measured outside: 0.216 / 0.227 / 0.238); about 95 s a run on a
quiet 2-core machine (39 min for the nine at load 4-15).

Its own fields, config.tbh.*:
  hidden_dim            H, the encoder's and decoder's hidden width (the authors' 1024)
  continuous_dim        C, the continuous bottleneck (the authors' 512)
  adjacency_power       the graph A = (1 - d_H / k) ** power (the authors' code: 1.4)
  code_noise            "uniform": the paper's stochastic binary neuron (eps ~ U[0, 1));
                        "none": eps = 1/2, as the authors' released code
  critic_learning_rate  the discriminators' Adam (the authors' 1e-4)
"""

from typing import Optional

import ml_collections

from configs import base


def get_config(variant: Optional[str] = None):
  """TBH on CIFAR-10 images (VGG16), or a variant of base with TBH's schedule."""
  config = base.get_config(variant)
  config.method = "tbh"
  config.tbh = ml_collections.ConfigDict({
      "hidden_dim": 1024,
      "continuous_dim": 512,
      "adjacency_power": 1.4,
      "code_noise": "uniform",
      "critic_learning_rate": 1e-4,
  })
  config.model.hash_init = "random"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.decay_every_epochs = 1000000  # Constant, as the authors'.
  config.optimizer.weight_decay = 0.0
  if variant == "features":
    # The authors' setting: the head directly on the fixed features (no trainable top),
    # batch 400; 1,000 epochs of the dev set's 1,000 training items (2 steps each) are the
    # 2,000 steps of the authors' 800 epochs there (a batch of 400 out of 1,000 items).
    config.model.top = "none"
    config.batch_size = 400
    config.num_epochs = 1000
    config.log_every_steps = 200
  elif variant == "digits":
    # A small, fast demo: 64-pixel inputs, a smaller auto-encoder, a faster learning rate.
    config.model.top = "none"
    config.tbh.hidden_dim = 256
    config.tbh.continuous_dim = 128
    config.optimizer.learning_rate = 1e-3
    config.tbh.critic_learning_rate = 1e-3
  return config
