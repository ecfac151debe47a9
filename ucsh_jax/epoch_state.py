"""The per-epoch state of UCSH: feature clusters, the similarity thresholds, the neighbours.

At the start of every epoch the features of all training images (eval mode: fc7, or the
trainable top's output) are clustered with k-means, warm-started from the previous centroids so
that cluster j keeps hash center j (the first epoch takes the best of several greedy k-means++
seedings); the SSDH thresholds are re-estimated from a sample of them (DESIGN.md section 2);
and, for the neighbour-rank targets, each image's cosine neighbours are recomputed.
"""

from typing import Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import ops


class EpochState(NamedTuple):
  """epoch: the epoch these values serve; centroids (N, d) float32; assignments (n_train,) int32
  (cluster of each training image, by position in the training set); threshold: s_t (scalar);
  threshold_right: SSDH's right threshold (scalar); neighbours (n_train, m) int32: the
  training-set indices of the m cosine neighbours of each training image (m = 0 when unused)."""
  epoch: np.ndarray
  centroids: np.ndarray
  assignments: np.ndarray
  threshold: np.ndarray
  threshold_right: np.ndarray
  neighbours: np.ndarray


def empty_epoch_state(num_clusters: int, feature_dim: int, num_train: int,
                      num_neighbours: int = 0) -> EpochState:
  """A placeholder (epoch -1) with the right shapes, used as a restore target."""
  return EpochState(epoch=np.asarray(-1, np.int32),
                    centroids=np.zeros((num_clusters, feature_dim), np.float32),
                    assignments=np.zeros((num_train,), np.int32),
                    threshold=np.asarray(0.0, np.float32),
                    threshold_right=np.asarray(0.0, np.float32),
                    neighbours=np.zeros((num_train, num_neighbours), np.int32))


def refresh_epoch_state(features_NxD: np.ndarray, previous: Optional[EpochState], *, epoch: int,
                        num_clusters: int, kmeans_iters: int, threshold_samples: int,
                        key: jax.Array, kmeans_inits: int = 1, kmeans_metric: str = "euclidean",
                        num_neighbours: int = 0) -> EpochState:
  """Clusters the training features, re-estimates the thresholds, finds the neighbours.

  Args:
    features_NxD: eval-mode features of every training image, in training-set order.
    previous: the last epoch's state (its centroids warm-start k-means), or None.
    epoch: the epoch the new state serves.
    key: randomness of this epoch (k-means++ when not warm-started, threshold sample).
    kmeans_inits: seeded k-means runs to keep the best of when not warm-started.
    kmeans_metric: "euclidean" or "cosine" (spherical k-means).
    num_neighbours: m cosine neighbours per image over the training set (0: none).
  """
  kmeans_key, sample_key = jax.random.split(key)
  warm = previous is not None and int(previous.epoch) >= 0
  x_NxD = jnp.asarray(features_NxD)
  result = ops.kmeans(x_NxD, num_clusters, key=kmeans_key, num_iters=kmeans_iters,
                      num_inits=kmeans_inits, metric=kmeans_metric,
                      init_centroids=jnp.asarray(previous.centroids) if warm else None)
  num = features_NxD.shape[0]
  sample = np.asarray(jax.random.permutation(sample_key, num))[:min(threshold_samples, num)]
  estimate = ops.similarity_threshold(jnp.asarray(features_NxD[np.sort(sample)]))
  neighbours = (ops.cosine_neighbours(x_NxD, num_neighbours) if num_neighbours
                else np.zeros((num, 0), np.int32))
  return EpochState(epoch=np.asarray(epoch, np.int32),
                    centroids=np.asarray(result.centroids, np.float32),
                    assignments=np.asarray(result.assignments, np.int32),
                    threshold=np.asarray(estimate.threshold, np.float32),
                    threshold_right=np.asarray(estimate.threshold_right, np.float32),
                    neighbours=np.asarray(neighbours, np.int32))


def cluster_scalars(state: EpochState, num_clusters: int) -> Dict[str, float]:
  """TensorBoard scalars of an epoch: "threshold", "cluster_size/{j}", "cluster_sizes_min"."""
  sizes = np.bincount(state.assignments, minlength=num_clusters)
  scalars = {"threshold": float(state.threshold), "cluster_sizes_min": float(sizes.min())}
  scalars.update({f"cluster_size/{j}": float(n) for j, n in enumerate(sizes)})
  return scalars


def changes(previous: EpochState, current: EpochState) -> Dict[str, float]:
  """How far the adaptive state moved from one epoch to the next, as the features moved.

  Returns {"assignments_changed": fraction of training images in another cluster,
  "threshold_change": s_t now minus s_t before} and, with neighbours (m > 0),
  "neighbours_replaced": the mean over training images of the fraction of their m neighbours
  that are new, and "neighbour_sets_changed": the fraction of images whose set changed.
  """
  out = {"assignments_changed": float(np.mean(previous.assignments != current.assignments)),
         "threshold_change": float(current.threshold - previous.threshold)}
  m = current.neighbours.shape[1]
  if m:
    kept = np.array([np.intersect1d(old, new, assume_unique=True).size
                     for old, new in zip(previous.neighbours, current.neighbours)])
    out["neighbours_replaced"] = float(np.mean(1.0 - kept / m))
    out["neighbour_sets_changed"] = float(np.mean(kept < m))
  return out
