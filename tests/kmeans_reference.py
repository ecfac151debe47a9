"""Plain NumPy references of k-means, for the tests (written independently of ucsh_jax.ops)."""

import numpy as np


def sq_dist(x, c):
  """(n, m) squared Euclidean distances between the rows of x and of c, in float64."""
  x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
  return ((x[:, None, :] - c[None, :, :])**2).sum(-1)


def lloyd(x, init, num_iters, *, allow_empty=True):
  """(centroids, inertia) after `num_iters` Lloyd updates from `init`.

  An empty cluster keeps its centroid, or with `allow_empty=False` fails the test (for inputs
  where the library's re-seeding must not be needed).
  """
  c = np.asarray(init, np.float64)
  for it in range(num_iters):
    assign = sq_dist(x, c).argmin(1)
    sizes = np.bincount(assign, minlength=len(c))
    assert allow_empty or sizes.min() > 0, f"iteration {it} leaves a cluster empty: {sizes}"
    c = np.stack([x[assign == j].mean(0) if sizes[j] else c[j] for j in range(len(c))])
  return c, sq_dist(x, c).min(1).sum()
