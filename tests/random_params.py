"""Model parameters of the right shapes drawn with NumPy, for tests.

A jitted `model.init` of VGG16 compiles slowly on CPU; `jax.eval_shape` gives the shapes at no
cost and NumPy fills them (scaled by 1/sqrt(fan_in) so activations stay of order one).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, input_shape, seed=0):
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(input_shape), train=False))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda a: rng.normal(size=a.shape).astype(np.float32) / math.sqrt(
          math.prod(a.shape[:-1]) if len(a.shape) > 1 else 100.0), abstract)
