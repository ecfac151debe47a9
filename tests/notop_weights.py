"""Keras notop VGG16 weight files made by the tests, in the layout of Keras'
`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (the conv base alone)."""

import h5py
import numpy as np

from ucsh_jax.models import vgg

POOL_AFTER = {2, 4, 7, 10, 13}  # Convs done when a max-pool follows.


def notop_layers(seed=0, width=1 / 16):
  """{conv name: (kernel HWIO, bias)} float32, He-normal kernels, small random biases."""
  rng = np.random.default_rng(seed)
  shapes = vgg.vgg16_param_shapes(width, include_fc=False)
  return {name: (rng.standard_normal(shapes[name]["kernel"], np.float32)
                 * np.float32(np.sqrt(2 / (9 * shapes[name]["kernel"][2]))),
                 rng.normal(0, 0.05, shapes[name]["bias"]).astype(np.float32))
          for name in vgg.CONV_NAMES}


def write_notop_h5(path, layers):
  """Keras 2 save_weights layout: layer_names with the pools, `<layer>_W_1:0` and `_b_1:0`."""
  order = []
  for i, name in enumerate(vgg.CONV_NAMES, 1):
    block, index = name[len("conv"):].split("_")
    order.append((f"block{block}_conv{index}", name))
    if i in POOL_AFTER:
      order.append((f"block{block}_pool", None))
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = np.array([keras.encode() for keras, _ in order])
    for keras, flax in order:
      group = f.create_group(keras)
      names = [f"{keras}_W_1:0", f"{keras}_b_1:0"] if flax else []
      group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
      for weight_name, value in zip(names, layers.get(flax, ())):
        group.create_dataset(weight_name, data=value)
