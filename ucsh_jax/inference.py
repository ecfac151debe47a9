"""Data-parallel eval-mode forward passes: fc7 features for clustering, codes for retrieval."""

from typing import Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import data
from ucsh_jax import ops
from ucsh_jax import parallel
from ucsh_jax import progress

# What the progress line of `outputs_for` calls its work, by output.
_DESCRIPTIONS = {"features": "feature extraction", "codes": "encoding"}


def make_forward(model: nn.Module, mesh: jax.sharding.Mesh) -> Callable[..., Dict[str, jax.Array]]:
  """`forward(params, inputs) -> {"features" (B, d) f32, "codes" (B, k) int8 +-1}`.

  Eval mode (no dropout); codes are `ops.sign_ste(logits)` (sign(0) = +1), the model's own
  binarisation, also under UCSH-R whose train-mode codes are tanh(logits). `inputs` is split
  over the mesh on its leading axis and the outputs stay split the same way.
  """
  out_sharding = parallel.batch_sharding(mesh)

  def forward(params, inputs):
    out = model.apply({"params": params}, inputs, train=False)
    codes = ops.sign_ste(out["logits"]).astype(jnp.int8)
    return {"features": out["features"].astype(jnp.float32), "codes": codes}

  return jax.jit(forward, out_shardings=out_sharding)


def outputs_for(forward: Callable[..., Dict[str, jax.Array]], params, source,
                indices: np.ndarray, key: str, *, mesh: jax.sharding.Mesh, batch_size: int,
                image_size: int, preprocessing, description: Optional[str] = None) -> np.ndarray:
  """`forward`'s output `key` ("features" or "codes") for the examples `indices` of `source`.

  Runs over ordered, padded eval batches (`batch_size` is global; each host reads its own
  slice) and copies only the requested output back from the devices. Process 0 logs a progress
  line (examples/s, ETA) named `description` (default: "feature extraction" or "encoding").

  Returns:
    (len(indices), ...) numpy array, in the order of `indices`, complete on every host.
  """
  batches = data.eval_batches(source, indices, batch_size=batch_size // jax.process_count(),
                              image_size=image_size, preprocessing=preprocessing)
  result = None
  seen = np.zeros((len(indices),), bool)
  line = progress.Progress(description or _DESCRIPTIONS.get(key, key), len(indices),
                           unit="examples")
  for batch in batches:
    inputs = batch["image"] if "image" in batch else batch["features"]
    glob = parallel.global_batch(
        mesh, {"inputs": inputs, "mask": batch["mask"], "index": batch["index"]})
    out, mask, index = parallel.to_host(
        (forward(params, glob["inputs"])[key], glob["mask"], glob["index"]))
    if result is None:
      result = np.zeros((len(indices),) + out.shape[1:], out.dtype)
    result[index[mask]] = out[mask]
    seen[index[mask]] = True
    line.update(int(mask.sum()))
  line.done()
  if not seen.all():
    raise RuntimeError(f"evaluation saw {seen.sum()} of {len(indices)} examples")
  return result
