"""Pure, jit-safe primitives of UCSH and the other methods: binarisation, hash centers, k-means,
similarities, losses."""

from ucsh_jax.ops._bihalf import bi_half
from ucsh_jax.ops._bihalf import bi_half_assignment
from ucsh_jax.ops._bihalf import bi_half_penalty
from ucsh_jax.ops._cosine_pairs import cosine_pair_loss
from ucsh_jax.ops._cosine_pairs import cubic_penalty
from ucsh_jax.ops._cosine_pairs import half_pair_cosines
from ucsh_jax.ops._distillhash import distill_pairs
from ucsh_jax.ops._distillhash import neighbour_label_counts
from ucsh_jax.ops._distillhash import pairwise_likelihood_loss
from ucsh_jax.ops._hadamard import hadamard
from ucsh_jax.ops._hadamard import hash_centers
from ucsh_jax.ops._kmeans import KMeansResult
from ucsh_jax.ops._kmeans import METRICS as KMEANS_METRICS
from ucsh_jax.ops._kmeans import kmeans
from ucsh_jax.ops._kmeans import kmeans_sharded
from ucsh_jax.ops._kmeans import num_seeding_candidates
from ucsh_jax.ops._losses import clustering_loss
from ucsh_jax.ops._losses import kl_loss
from ucsh_jax.ops._losses import reconstruction_loss
from ucsh_jax.ops._losses import separating_loss
from ucsh_jax.ops._losses import similarity_loss
from ucsh_jax.ops._losses import vae_loss
from ucsh_jax.ops._rotate import rotate_images
from ucsh_jax.ops._sign import sign_ste
from ucsh_jax.ops._similarity import ThresholdEstimate
from ucsh_jax.ops._similarity import cosine_neighbours
from ucsh_jax.ops._similarity import neighbour_similarity
from ucsh_jax.ops._similarity import pairwise_similarity
from ucsh_jax.ops._similarity import similarity_threshold
from ucsh_jax.ops._similarity import ssdh_similarity
from ucsh_jax.ops._tbh import binary_cross_entropy
from ucsh_jax.ops._tbh import hamming_adjacency
from ucsh_jax.ops._tbh import normalized_adjacency
from ucsh_jax.ops._tbh import stochastic_binary

__all__ = (
    "KMEANS_METRICS",
    "KMeansResult",
    "ThresholdEstimate",
    "bi_half",
    "bi_half_assignment",
    "bi_half_penalty",
    "binary_cross_entropy",
    "clustering_loss",
    "cosine_neighbours",
    "cosine_pair_loss",
    "cubic_penalty",
    "distill_pairs",
    "hadamard",
    "half_pair_cosines",
    "hamming_adjacency",
    "hash_centers",
    "kmeans",
    "kl_loss",
    "kmeans_sharded",
    "neighbour_label_counts",
    "neighbour_similarity",
    "normalized_adjacency",
    "num_seeding_candidates",
    "pairwise_likelihood_loss",
    "pairwise_similarity",
    "reconstruction_loss",
    "rotate_images",
    "separating_loss",
    "sign_ste",
    "similarity_loss",
    "similarity_threshold",
    "ssdh_similarity",
    "stochastic_binary",
    "vae_loss",
)
