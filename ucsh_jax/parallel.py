"""The device mesh and the host <-> global-array plumbing of data parallelism.

Every array that enters a compiled step is either replicated (parameters, per-epoch state) or
split along its leading axis over the mesh axis "data" (batches). Each host holds only its own
slice of a batch; `global_batch` assembles the global array from the host-local pieces.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: every device of every host) with axis "data"."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Explicit,), devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Leading axis split over "data", the rest replicated."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def global_batch(mesh: jax.sharding.Mesh, host_batch: Any) -> Any:
  """Host-local numpy arrays (B_host, ...) -> global jax arrays (B_host * num_hosts, ...)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
  """Places the same value on every device of the mesh.

  With several processes each host places its own copy on its own devices, so the value must be
  identical on all hosts (it is not checked: that would cost a collective per leaf).
  """
  sharding = replicated_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def same_on_all_hosts(tree: Any) -> Any:
  """Process 0's value of a pytree of host arrays, on every host (a no-op with one process).

  For values each host computes itself that must agree exactly before `replicate`, e.g. the
  result of k-means, which on GPUs may differ in the last bits between hosts.
  """
  return multihost_utils.broadcast_one_to_all(tree)


def to_host(tree: Any) -> Any:
  """Global jax arrays -> full numpy arrays on every host (gathers across hosts if needed)."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return multihost_utils.process_allgather(tree, tiled=True)
