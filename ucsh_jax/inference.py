"""Data-parallel eval-mode forward passes: fc7 features for clustering, codes for retrieval."""

from typing import Callable, Dict, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import parallel


def make_forward(model: nn.Module, mesh: jax.sharding.Mesh) -> Callable[..., Dict[str, jax.Array]]:
  """`forward(params, inputs) -> {"features" (B, d) f32, "codes" (B, k) int8 +-1}`.

  Eval mode (no dropout); codes are sign(logits) with sign(0) = +1. `inputs` is split over the
  mesh on its leading axis and the outputs stay split the same way.
  """
  out_sharding = parallel.batch_sharding(mesh)

  def forward(params, inputs):
    out = model.apply({"params": params}, inputs, train=False)
    codes = jnp.where(out["logits"] >= 0, 1, -1).astype(jnp.int8)
    return {"features": out["features"].astype(jnp.float32), "codes": codes}

  return jax.jit(forward, out_shardings=out_sharding)


def collect(forward: Callable[..., Dict[str, jax.Array]], params, batches: Iterable[dict],
            mesh: jax.sharding.Mesh, num_examples: int, keys=("features", "codes")
            ) -> Dict[str, np.ndarray]:
  """Runs `forward` over eval batches and returns the outputs of all examples, in order.

  Args:
    batches: host-local batches with "image" or "features", "mask" (B,) and "index" (B,), the
      position of each example in the evaluated set (padding has mask False).
    num_examples: size of the evaluated set (over all hosts).
  Returns:
    {key: (num_examples, ...) numpy array} on every host.
  """
  result = {}
  seen = np.zeros((num_examples,), bool)
  for batch in batches:
    inputs = batch["image"] if "image" in batch else batch["features"]
    host = {"inputs": inputs, "mask": batch["mask"], "index": batch["index"]}
    glob = parallel.global_batch(mesh, host)
    out = parallel.to_host(forward(params, glob["inputs"]))
    mask, index = parallel.to_host((glob["mask"], glob["index"]))
    for name in keys:
      if name not in result:
        result[name] = np.zeros((num_examples,) + out[name].shape[1:], out[name].dtype)
      result[name][index[mask]] = out[name][mask]
    seen[index[mask]] = True
  if not seen.all():
    raise RuntimeError(f"evaluation saw {seen.sum()} of {num_examples} examples")
  return result
