"""The per-epoch state of UCSH: feature clusters and the similarity threshold.

At the start of every epoch the fc7 features of all training images (eval mode) are clustered
with k-means, warm-started from the previous centroids so that cluster j keeps hash center j,
and the SSDH threshold s_t is re-estimated from a sample of them (DESIGN.md section 2).
"""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import ops


class EpochState(NamedTuple):
  """epoch: the epoch these values serve; centroids (N, d) float32; assignments (n_train,) int32
  (cluster of each training image, by position in the training set); threshold: s_t (scalar)."""
  epoch: np.ndarray
  centroids: np.ndarray
  assignments: np.ndarray
  threshold: np.ndarray


def empty_epoch_state(num_clusters: int, feature_dim: int, num_train: int) -> EpochState:
  """A placeholder (epoch -1) with the right shapes, used as a restore target."""
  return EpochState(epoch=np.asarray(-1, np.int32),
                    centroids=np.zeros((num_clusters, feature_dim), np.float32),
                    assignments=np.zeros((num_train,), np.int32),
                    threshold=np.asarray(0.0, np.float32))


def refresh_epoch_state(features_NxD: np.ndarray, previous: Optional[EpochState], *, epoch: int,
                        num_clusters: int, kmeans_iters: int, threshold_samples: int,
                        key: jax.Array) -> EpochState:
  """Clusters the training features and re-estimates the similarity threshold.

  Args:
    features_NxD: fc7 features of every training image, in training-set order.
    previous: the last epoch's state (its centroids warm-start k-means), or None.
    epoch: the epoch the new state serves.
    key: randomness of this epoch (k-means++ when not warm-started, threshold sample).
  """
  kmeans_key, sample_key = jax.random.split(key)
  warm = previous is not None and int(previous.epoch) >= 0
  result = ops.kmeans(jnp.asarray(features_NxD), num_clusters, key=kmeans_key,
                      num_iters=kmeans_iters,
                      init_centroids=jnp.asarray(previous.centroids) if warm else None)
  num = features_NxD.shape[0]
  sample = np.asarray(jax.random.permutation(sample_key, num))[:min(threshold_samples, num)]
  estimate = ops.similarity_threshold(jnp.asarray(features_NxD[np.sort(sample)]))
  return EpochState(epoch=np.asarray(epoch, np.int32),
                    centroids=np.asarray(result.centroids, np.float32),
                    assignments=np.asarray(result.assignments, np.int32),
                    threshold=np.asarray(estimate.threshold, np.float32))
