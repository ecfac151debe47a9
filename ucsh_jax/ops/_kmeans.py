"""Lloyd's k-means (Euclidean or spherical), greedy k-means++ restarts, on one or many devices."""

import functools
import math
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp

# Full float32 matmuls (no TF32 or bf16 passes on accelerators): assignments compare
# distances that differ by little.
_HIGHEST = lax.Precision.HIGHEST


class KMeansResult(NamedTuple):
  """Result of `kmeans`.

  Attributes:
    centroids: (N, d) float32 centroids after the last update.
    assignments: (n,) int32 index of each row's nearest centroid (first on ties).
    inertia: float32 scalar, sum over rows of the squared distance to its centroid.
  """
  centroids: jax.Array
  assignments: jax.Array
  inertia: jax.Array


class _Rows:
  """Reductions over the rows of x, global over `axis_name` when it is given."""

  def __init__(self, num_local: int, axis_name: Optional[str]):
    self.axis_name = axis_name
    self.num_local = num_local
    if axis_name is None:
      self.num_shards, self.offset = 1, 0
    else:
      self.num_shards = lax.axis_size(axis_name)
      self.offset = lax.axis_index(axis_name) * num_local
    self.num_global = num_local * self.num_shards

  def sum(self, v):
    return v if self.axis_name is None else lax.psum(v, self.axis_name)

  def gather(self, v):
    """(m, ...) per shard -> (num_shards * m, ...) in row order."""
    if self.axis_name is None:
      return v
    return lax.all_gather(v, self.axis_name, tiled=True)

  def take(self, x_NxD, global_idx):
    """Rows of the global x at the (replicated) global indices, replicated."""
    local = global_idx - self.offset
    mine = (local >= 0) & (local < self.num_local)
    rows = x_NxD[jnp.clip(local, 0, self.num_local - 1)]
    return self.sum(jnp.where(mine[..., None], rows, 0.0))

  def argmax(self, v):
    """Global index of the largest entry of v (the first one on ties)."""
    local = jnp.argmax(v)
    values = self.gather(v[local][None])
    indices = self.gather((local + self.offset)[None])
    return indices[jnp.argmax(values)]


def _nearest(x_NxD, sq_x_N, centroids_CxD):
  """Nearest centroid of each row and the squared distance to it (clipped at 0)."""
  # ||x||^2 is the same for every centroid, so it only enters the distance, not the argmin.
  cross_NxC = jnp.matmul(x_NxD, centroids_CxD.T, precision=_HIGHEST)
  part_NxC = jnp.sum(jnp.square(centroids_CxD), axis=-1)[None, :] - 2.0 * cross_NxC
  assign_N = jnp.argmin(part_NxC, axis=-1).astype(jnp.int32)
  dist_N = jnp.maximum(sq_x_N + jnp.min(part_NxC, axis=-1), 0.0)
  return assign_N, dist_N


def _draw_rows(key, log_weight_N, num_draws, rows):
  """Global indices of `num_draws` rows drawn with replacement, row i with prob ~ exp(log_w_i).

  Gumbel-max sampling with noise tied to the global row index, so the draw does not depend on
  how the rows are sharded. Returns (num_draws,) int32.
  """
  def one(draw_key):
    noise = jax.random.gumbel(draw_key, (rows.num_global,))
    noise_N = lax.dynamic_slice_in_dim(noise, rows.offset, rows.num_local)
    return rows.argmax(log_weight_N + noise_N)

  return jax.vmap(one)(jax.random.split(key, num_draws))


def _sq_dist_to(x_NxD, sq_x_N, c_LxD):
  """(n, L) squared distances of every row to each of L points, clipped at 0."""
  cross_NxL = jnp.matmul(x_NxD, c_LxD.T, precision=_HIGHEST)
  return jnp.maximum(sq_x_N[:, None] - 2.0 * cross_NxL
                     + jnp.sum(jnp.square(c_LxD), axis=-1)[None, :], 0.0)


def num_seeding_candidates(num_clusters: int) -> int:
  """Candidates per greedy k-means++ step: 2 + floor(ln N), scikit-learn's choice."""
  return 2 + int(math.log(num_clusters))


def _kmeans_plus_plus(x_NxD, sq_x_N, key, num_clusters, rows):
  """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

  The first centroid is a uniformly drawn row. Each further one is the best of
  L = 2 + floor(ln N) candidate rows drawn with probability ~ D(x)^2 (the squared distance to
  the nearest centroid so far): the candidate that leaves the smallest total D(x)^2.
  """
  num_candidates = num_seeding_candidates(num_clusters)
  first_key, key = jax.random.split(key)
  first = _draw_rows(first_key, jnp.zeros_like(sq_x_N), 1, rows)
  first_1xD = rows.take(x_NxD, first)
  centroids = jnp.zeros((num_clusters, x_NxD.shape[1]), x_NxD.dtype).at[0].set(first_1xD[0])
  dist_N = _sq_dist_to(x_NxD, sq_x_N, first_1xD)[:, 0]

  def body(i, state):
    centroids, dist_N = state
    log_weight_N = jnp.where(dist_N > 0, jnp.log(dist_N), -jnp.inf)
    idx_L = _draw_rows(jax.random.fold_in(key, i), log_weight_N, num_candidates, rows)
    cand_LxD = rows.take(x_NxD, idx_L)
    new_NxL = jnp.minimum(dist_N[:, None], _sq_dist_to(x_NxD, sq_x_N, cand_LxD))
    best = jnp.argmin(rows.sum(jnp.sum(new_NxL, axis=0)))
    return centroids.at[i].set(cand_LxD[best]), new_NxL[:, best]

  centroids, _ = lax.fori_loop(1, num_clusters, body, (centroids, dist_N))
  return centroids


def _update(x_NxD, assign_N, dist_N, num_clusters, rows):
  """Centroid means; an empty cluster is re-seeded at a row far from its centroid.

  The j-th empty cluster (in index order) gets the row with the j-th largest distance
  to its own centroid (lowest global index first on ties).
  """
  one_hot_NxC = (assign_N[:, None] == jnp.arange(num_clusters)[None, :]).astype(x_NxD.dtype)
  sums_CxD = rows.sum(jnp.matmul(one_hot_NxC.T, x_NxD, precision=_HIGHEST))
  counts_C = rows.sum(jnp.sum(one_hot_NxC, axis=0))
  means_CxD = sums_CxD / jnp.maximum(counts_C, 1.0)[:, None]

  num_local_far = min(num_clusters, rows.num_local)
  far_dist, far_idx = lax.top_k(dist_N, num_local_far)
  far_dist, far_idx = rows.gather(far_dist), rows.gather(far_idx + rows.offset)
  order = lax.top_k(far_dist, num_clusters)[1]
  empty_C = counts_C == 0
  rank_C = jnp.clip(jnp.cumsum(empty_C) - 1, 0, num_clusters - 1)
  seeds_CxD = rows.take(x_NxD, far_idx[order][rank_C])
  return jnp.where(empty_C[:, None], seeds_CxD, means_CxD)


METRICS = ("euclidean", "cosine")


def _normalise_rows(x_NxD):
  """Rows scaled to unit L2 norm (a zero row stays zero)."""
  sq_N = jnp.sum(jnp.square(x_NxD), axis=-1, keepdims=True)
  return x_NxD * lax.rsqrt(jnp.maximum(sq_N, 1e-16))


def _lloyd(x_NxD, sq_x_N, centroids, *, num_clusters, num_iters, spherical, rows):
  """At most `num_iters` Lloyd updates from `centroids`; the final KMeansResult."""

  def cond(state):
    i, _, _, changed = state
    return (i < num_iters) & changed

  def body(state):
    i, centroids, prev_N, _ = state
    assign_N, dist_N = _nearest(x_NxD, sq_x_N, centroids)
    # Unchanged assignments give unchanged centroids: the remaining iterations are no-ops.
    changed = rows.sum(jnp.sum(assign_N != prev_N)) > 0
    centroids = _update(x_NxD, assign_N, dist_N, num_clusters, rows)
    if spherical:
      centroids = _normalise_rows(centroids)
    return i + 1, centroids, assign_N, changed

  prev_N = jnp.full_like(sq_x_N, -1, jnp.int32)
  _, centroids, _, _ = lax.while_loop(cond, body, (0, centroids, prev_N, jnp.bool_(True)))
  assign_N, dist_N = _nearest(x_NxD, sq_x_N, centroids)
  return KMeansResult(centroids, assign_N, rows.sum(jnp.sum(dist_N)))


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters", "num_inits", "metric",
                                             "axis_name"))
def _kmeans(x_NxD, key, init_centroids, *, num_clusters, num_iters, num_inits, metric,
            axis_name):
  rows = _Rows(x_NxD.shape[0], axis_name)
  spherical = metric == "cosine"
  if spherical:
    x_NxD = _normalise_rows(x_NxD)
  sq_x_N = jnp.sum(jnp.square(x_NxD), axis=-1)
  lloyd = functools.partial(_lloyd, x_NxD, sq_x_N, num_clusters=num_clusters,
                            num_iters=num_iters, spherical=spherical, rows=rows)
  if init_centroids is not None:
    init = init_centroids.astype(x_NxD.dtype)
    return lloyd(_normalise_rows(init) if spherical else init)

  def from_seeding(init_key):
    return lloyd(_kmeans_plus_plus(x_NxD, sq_x_N, init_key, num_clusters, rows))

  # Run i seeds from split(key, num_inits)[i]; a single run from `key` itself.
  keys = key[None] if num_inits == 1 else jax.random.split(key, num_inits)
  runs = jax.vmap(from_seeding)(keys)
  best = jnp.argmin(runs.inertia)  # Replicated: the inertia is a global sum.
  return jax.tree.map(lambda v: v[best], runs)


def kmeans(x: jax.Array,
           num_clusters: int,
           *,
           key: jax.Array,
           num_iters: int = 20,
           num_inits: int = 1,
           init_centroids: Optional[jax.Array] = None,
           metric: str = "euclidean",
           axis_name: Optional[str] = None) -> KMeansResult:
  """Lloyd's k-means from greedy k-means++ seeds (best of `num_inits`) or a warm start, jitted.

  Distances are ||x||^2 - 2 x c^T + ||c||^2 (one matmul per iteration). Each of at most
  `num_iters` iterations assigns every row to its nearest centroid and moves each
  centroid to the mean of its rows. An empty cluster is re-seeded, so centroids are never
  NaN: the j-th empty cluster (in index order) moves to the row with the j-th largest
  distance to its nearest centroid. Iteration stops early once the assignments no longer
  change (the later iterations would change nothing). The final assignments and inertia
  are those of the returned centroids.

  Without `init_centroids`, `num_inits` independent runs (vmapped, computed together) each
  start from greedy k-means++ seeds (`num_seeding_candidates(N)` candidates per centroid, the
  one that lowers the potential most is kept) and the run with the lowest inertia is returned,
  like scikit-learn's `KMeans(n_init=num_inits)`.

  With metric "cosine" (spherical k-means) the rows are first scaled to unit norm and the
  centroids are renormalised after every update: rows go to the centroid of largest cosine, and
  the inertia is that of the unit rows, sum_i ||x_i/|x_i| - c||^2 = sum_i 2 (1 - cos(x_i, c)).

  Args:
    x: (n, d) float rows; n >= num_clusters. With `axis_name`, this device's rows.
    num_clusters: N, the number of clusters.
    key: PRNG key for the k-means++ seeding (unused when warm-started).
    num_iters: the maximum number of Lloyd updates.
    num_inits: seeded runs to keep the best of (ignored when warm-started).
    init_centroids: optional (N, d) warm start (e.g. the previous epoch's centroids, so
      that cluster j keeps its identity); k-means++ seeding otherwise.
    metric: "euclidean" (squared Euclidean distance) or "cosine" (spherical k-means).
    axis_name: when given, the call runs inside `jax.shard_map` with the rows of x
      split evenly over this mesh axis; every reduction (sums, counts, inertia,
      k-means++ sampling, re-seeding) is global, so the result matches one device up to
      float rounding. `assignments` are then this device's rows; the rest is
      replicated. See `kmeans_sharded`.

  Returns:
    KMeansResult(centroids (N, d) float32, assignments (n,) int32, inertia float32).
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2:
    raise ValueError(f"x must be 2-D (n, d), got shape {x.shape}")
  if num_clusters < 1:
    raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
  if num_inits < 1:
    raise ValueError(f"num_inits must be >= 1, got {num_inits}")
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  num_rows = x.shape[0] * (1 if axis_name is None else lax.axis_size(axis_name))
  if num_rows < num_clusters:
    raise ValueError(f"x has {num_rows} rows, fewer than num_clusters = {num_clusters}")
  if init_centroids is not None:
    init_centroids = jnp.asarray(init_centroids)
    if init_centroids.shape != (num_clusters, x.shape[1]):
      raise ValueError(
          f"init_centroids must be (num_clusters, d) = {(num_clusters, x.shape[1])}, "
          f"got shape {init_centroids.shape}")
  return _kmeans(x, key, init_centroids, num_clusters=num_clusters, num_iters=num_iters,
                 num_inits=num_inits, metric=metric, axis_name=axis_name)


@functools.lru_cache(maxsize=32)
def _sharded_fn(mesh, axis_name, num_clusters, num_iters, num_inits, metric, warm):
  """jit(shard_map(kmeans)) for one configuration, built once and reused."""
  P = jax.sharding.PartitionSpec

  def per_device(x, key, *init):
    return kmeans(x, num_clusters, key=key, num_iters=num_iters, num_inits=num_inits,
                  init_centroids=init[0] if warm else None, metric=metric,
                  axis_name=axis_name)

  in_specs = (P(axis_name), P()) + ((P(),) if warm else ())
  return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=in_specs,
                               out_specs=KMeansResult(P(), P(axis_name), P())))


def kmeans_sharded(x: jax.Array,
                   num_clusters: int,
                   *,
                   key: jax.Array,
                   mesh: jax.sharding.Mesh,
                   axis_name: str = "data",
                   num_iters: int = 20,
                   num_inits: int = 1,
                   init_centroids: Optional[jax.Array] = None,
                   metric: str = "euclidean") -> KMeansResult:
  """`kmeans` with the rows of x sharded over `mesh` axis `axis_name` (via shard_map).

  Args:
    x: (n, d) rows, n divisible by the size of the mesh axis; an array placed otherwise
      (or a host array) is put with NamedSharding(mesh, P(axis_name)).
    mesh: the device mesh; the other arguments are those of `kmeans`.

  Returns:
    KMeansResult with replicated centroids and inertia and assignments sharded like x.
  """
  num_shards = mesh.shape[axis_name]
  if x.ndim != 2 or x.shape[0] % num_shards:
    raise ValueError(
        f"x must be 2-D with rows divisible by the {num_shards} devices of mesh axis "
        f"{axis_name!r}, got shape {x.shape}")
  x = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name)))
  fn = _sharded_fn(mesh, axis_name, num_clusters, num_iters, num_inits, metric,
                   init_centroids is not None)
  if init_centroids is None:
    return fn(x, key)
  return fn(x, key, jnp.asarray(init_centroids))
