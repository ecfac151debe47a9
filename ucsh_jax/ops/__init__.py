"""Pure, jit-safe primitives of UCSH: binarisation, hash centers, k-means, similarities, losses."""

from ucsh_jax.ops._hadamard import hadamard
from ucsh_jax.ops._hadamard import hash_centers
from ucsh_jax.ops._kmeans import kmeans
from ucsh_jax.ops._kmeans import kmeans_sharded
from ucsh_jax.ops._kmeans import KMeansResult
from ucsh_jax.ops._kmeans import METRICS as KMEANS_METRICS
from ucsh_jax.ops._kmeans import num_seeding_candidates
from ucsh_jax.ops._losses import clustering_loss
from ucsh_jax.ops._losses import kl_loss
from ucsh_jax.ops._losses import reconstruction_loss
from ucsh_jax.ops._losses import separating_loss
from ucsh_jax.ops._losses import similarity_loss
from ucsh_jax.ops._losses import vae_loss
from ucsh_jax.ops._rotate import rotate_images
from ucsh_jax.ops._sign import sign_ste
from ucsh_jax.ops._similarity import cosine_neighbours
from ucsh_jax.ops._similarity import neighbour_similarity
from ucsh_jax.ops._similarity import pairwise_similarity
from ucsh_jax.ops._similarity import similarity_threshold
from ucsh_jax.ops._similarity import ssdh_similarity
from ucsh_jax.ops._similarity import ThresholdEstimate

__all__ = (
    "KMEANS_METRICS",
    "KMeansResult",
    "ThresholdEstimate",
    "clustering_loss",
    "cosine_neighbours",
    "hadamard",
    "hash_centers",
    "kmeans",
    "kl_loss",
    "kmeans_sharded",
    "neighbour_similarity",
    "num_seeding_candidates",
    "pairwise_similarity",
    "reconstruction_loss",
    "separating_loss",
    "sign_ste",
    "similarity_loss",
    "similarity_threshold",
    "ssdh_similarity",
    "vae_loss",
)
