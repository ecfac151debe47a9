"""CIFAR-10 with the paper's settings (UCSH, Table 1).

  python -m ucsh_jax.main --config=configs/cifar.py --workdir=runs/cifar16 \
      --config.model.pretrained=/path/to/vgg16-397923af.pth --config.bits=16

Needs `cifar-10-python.tar.gz` (downloaded by tfds when online, otherwise put it in
`--config.data.manual_dir`). About 1 h per 50 epochs on one modern GPU. Ablations of Table 2:
`--config.ablation=V` (no VAE), `C` (no clustering), `S` (no separating), `R` (tanh relaxation).
"""

import ml_collections

from configs import base


def add_ucsh_fields(config: ml_collections.ConfigDict) -> None:
  """UCSH's own fields (they predate the methods layer, so they are not under config.ucsh)."""
  config.method = "ucsh"
  config.num_clusters = 10  # N, the number of k-means clusters (hash centers).
  config.ablation = ""  # "" (full UCSH) or one of "V", "C", "S", "R" (Table 2).

  config.loss = ml_collections.ConfigDict()
  config.loss.alpha = 1e-3  # Weight of the binary-latent VAE loss L_V.
  config.loss.beta = 10.0  # Weight of the clustering loss L_C.
  config.loss.gamma = 1e-2  # Weight of the similarity separating loss L_S.
  # "paper": the terms are means over the global batch weighted so that the objective equals
  # eq. 7's literal sums at batch loss.reference_batch up to one positive factor (at every code
  # length and device count); "mean": alpha, beta, gamma weight the per-term means directly.
  config.loss.balance = "paper"
  config.loss.reference_batch = 24  # The batch whose literal-sum balance "paper" keeps.

  config.similarity = ml_collections.ConfigDict()
  # Targets S of L_2: "cosine" (S = 2 cos - 1, the paper) or "neighbours" (+1 for the
  # num_neighbours nearest training images by cosine, symmetrised, else -1).
  config.similarity.target = "cosine"
  # m for "neighbours"; 0 = a tenth of the training set at 16 bits, a twentieth above.
  config.similarity.num_neighbours = 0

  config.kmeans_iters = 20  # Lloyd iterations per epoch (warm-started).
  config.kmeans_inits = 10  # Greedy k-means++ restarts of the first epoch (later: warm start).
  config.kmeans_metric = "euclidean"  # "euclidean", or "cosine" (spherical k-means).


def get_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 configuration; the other UCSH configs start from this one."""
  config = base.get_config()
  add_ucsh_fields(config)
  return config
