"""ucsh-jax: Unsupervised Cluster and Separate Hashing (UCSH) in JAX and Flax."""
