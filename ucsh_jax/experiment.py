"""Turns a config into the pieces of a run: model, parameters, optimiser and loss weights.

Derived values live here, not in the configs, so that command-line overrides stay consistent.
"""

import os
from typing import Dict, Optional, Tuple

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ucsh_jax import errors
from ucsh_jax import methods
from ucsh_jax import models
from ucsh_jax import preprocessing as preprocessing_lib
from ucsh_jax.baselines import itq
from ucsh_jax.models import download
from ucsh_jax.models import ucsh as ucsh_model
from ucsh_jax.models import vgg

# config.model.pretrained may name a standard file (`download.NAMES`) instead of giving its path;
# it is then looked up in (or downloaded to) WEIGHTS_CACHE.
WEIGHTS_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ucsh_jax")
BACKBONES = ("vgg16", "none")
OPTIMIZERS = ("adam", "sgd")
TOPS = ("none", "fc")
HASH_INITS = ("random", "itq")
CODE_ACTIVATIONS = ("sign", "tanh")
# Parameters under these top-level names produce the features x (the VGG16 or the trainable top);
# their learning rate is config.optimizer.feature_lr_scale times the others' (the VGG16's also
# times config.optimizer.backbone_lr_scale).
FEATURE_PARAMS = ("backbone", "top")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises UserError naming the config field that makes the run impossible."""
  method = methods.method_class(config)
  if method.needs_images and not uses_images(config):
    raise errors.UserError(
        f"config.method={config.method!r} needs the images themselves (it transforms them) and "
        f"config.data.name={config.data.name!r} gives feature vectors: use an image data set")
  if config.optimizer.name not in OPTIMIZERS:
    raise errors.UserError(f"config.optimizer.name={config.optimizer.name!r}; expected one of "
                           f"{OPTIMIZERS}")
  if config.model.backbone not in BACKBONES:
    raise errors.UserError(f"config.model.backbone={config.model.backbone!r}; expected one of "
                           f"{BACKBONES}")
  if config.model.backbone == "none" and config.model.pretrained:
    raise errors.UserError("config.model.pretrained is set but config.model.backbone='none' has no "
                           "VGG16 to load it into")
  if config.model.dtype not in ("float32", "bfloat16"):
    raise errors.UserError(
        f"config.model.dtype={config.model.dtype!r}; expected float32 or bfloat16")
  choices = [("model.top", config.model.top, TOPS),
             ("model.hash_init", config.model.hash_init, HASH_INITS),
             ("model.code_activation", config.model.code_activation, CODE_ACTIVATIONS)]
  for name, value, allowed in choices:
    if value not in allowed:
      raise errors.UserError(f"config.{name}={value!r}; expected one of {allowed}")
  if config.model.pooling not in vgg.POOLINGS:
    raise errors.UserError(f"config.model.pooling={config.model.pooling!r}; expected one of "
                           f"{vgg.POOLINGS}")
  if config.model.top != "none" and uses_backbone(config) and config.model.pooling == "fc7":
    raise errors.UserError(f"config.model.top={config.model.top!r} replaces the trainable "
                           "fc7 of a network without one: use it with data.name='features', "
                           "model.backbone='none' or an average model.pooling "
                           "('avg_conv5_3', 'avg_pool5')")
  if config.model.trainable_from and not uses_backbone(config):
    raise errors.UserError(f"config.model.trainable_from={config.model.trainable_from!r} freezes "
                           "layers of the VGG16, and this run has none (data.name='features' "
                           "or model.backbone='none'): leave it ''")
  if config.model.trainable_from:
    names = vgg.layer_names(config.model.pooling)
    if config.model.trainable_from not in names:
      raise errors.UserError(
          f"config.model.trainable_from={config.model.trainable_from!r} names no layer of "
          f"the VGG16 with pooling {config.model.pooling!r}; expected '' (all layers train) or "
          f"one of {', '.join(names)}")
  if uses_backbone(config) and config.data.image_size < vgg.min_image_size(config.model.pooling):
    size = vgg.min_image_size(config.model.pooling)
    raise errors.UserError(
        f"config.data.image_size={config.data.image_size} is too small for the VGG16 with "
        f"pooling {config.model.pooling!r}: the minimum is {size}")
  if config.optimizer.backbone_lr_scale < 0 or config.optimizer.feature_lr_scale < 0:
    raise errors.UserError("config.optimizer.feature_lr_scale and backbone_lr_scale must be >= 0")
  for name in ("bits", "batch_size", "num_epochs", "threshold_samples",
               "checkpoint_every_epochs"):
    if config[name] < 1:
      raise errors.UserError(f"config.{name}={config[name]} must be at least 1")
  if config.bits % 8:
    raise errors.UserError(
        f"config.bits={config.bits} must be a multiple of 8: the codes are packed into bytes "
        "for the Hamming index that encode, search and the report use")
  if config.batch_size % num_devices:
    raise errors.UserError(f"config.batch_size={config.batch_size} must be a multiple of the "
                           f"{num_devices} devices")
  if config.eval.batch_size % num_devices:
    raise errors.UserError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple of "
                           f"the {num_devices} devices")
  method.validate(config)


def check_hash_init(config: ml_collections.ConfigDict, feature_dim: int) -> None:
  """UserError unless `config.model.hash_init` can start a hash layer of `config.bits` bits on
  features of width `feature_dim` (ITQ keeps `bits` principal directions of the features)."""
  if config.model.hash_init == "itq" and config.bits > feature_dim:
    raise errors.UserError(
        f"config.bits={config.bits} with config.model.hash_init='itq': ITQ needs at most as "
        f"many bits as the {feature_dim} dimensions of the features the hash layer sees",
        hint=f"use config.bits <= {feature_dim}, or config.model.hash_init='random'")



class FlatInputHashNet(nn.Module):
  """The hash head and decoder on vectors or flattened images, optionally behind a trainable top.

  Without `top` the inputs are the features x; with it (a `FeatureTop`, submodule "top") x is
  the top's output, from which the similarities, threshold and clusters are computed.
  Returns {"features" (n, d), "similarity_features" (n, d) (the top without dropout),
  "logits", "codes", "reconstruction"} like UCSH.
  """
  head: nn.Module
  top: Optional[nn.Module] = None

  def __call__(self, inputs: jax.Array, *, train: bool,
               code_noise: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
    inputs = inputs.reshape(inputs.shape[0], -1).astype(jnp.float32)
    features = inputs if self.top is None else self.top(inputs, train=train)
    # The top without its dropout: the features the threshold and the clusters come from.
    clean = features if self.top is None or not train else self.top(inputs, train=False)
    return {"features": features, "similarity_features": clean,
            **self.head(features, train=train, code_noise=code_noise)}


def uses_images(config: ml_collections.ConfigDict) -> bool:
  return config.data.name != "features"


def uses_backbone(config: ml_collections.ConfigDict) -> bool:
  return uses_images(config) and config.model.backbone == "vgg16"


def backbone_feature_dim(config: ml_collections.ConfigDict) -> int:
  """Width of the VGG16's features x: fc7's, or the pooled conv maps' (and the top's)."""
  if config.model.pooling == "fc7":
    return vgg.scaled_width(vgg.FC_FEATURES, config.model.width)
  return vgg.scaled_width(512, config.model.width)


def build_model(config: ml_collections.ConfigDict, feature_dim: Optional[int] = None,
                start_layer: str = vgg.CONV_NAMES[0]):
  """The network of `config.method`: the VGG16 (or the inputs, optionally behind a trainable
  top) giving the features x, and the method's head on them.

  `feature_dim` is the size of a flattened input; needed only without the VGG16 backbone.
  `start_layer`: the network applied from that VGG16 layer on, to the activations entering it
  (what a frozen prefix computed once gives, see `prefix_cache`); its parameters are the
  whole network's, of which it reads the layers it runs.
  """
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  method = methods.method_class(config)
  if not uses_backbone(config):
    # Dropout only with a trainable top (before it, as before fc7, and before the hash layer):
    # on fixed inputs it would only add noise.
    rate = config.model.dropout_rate if config.model.top != "none" else 0.0
    top = ucsh_model.FeatureTop(dropout_rate=rate, dtype=dtype, name="top") if (
        config.model.top == "fc") else None
    return FlatInputHashNet(method.make_head(config, feature_dim, dtype, rate), top=top)
  head = method.make_head(config, backbone_feature_dim(config), dtype,
                          config.model.dropout_rate)
  return models.UCSH(bits=config.bits, width=config.model.width,
                     pooled_size=config.model.pooled_size, dropout_rate=config.model.dropout_rate,
                     dtype=dtype, pooling=config.model.pooling, top=config.model.top == "fc",
                     start_layer=start_layer, head=head)


def preprocessing_for(config: ml_collections.ConfigDict
                      ) -> Tuple[Optional[dict], preprocessing_lib.Preprocessing]:
  """(pretrained VGG16 variables or None, the pixel preprocessing the network expects).

  `config.model.pretrained` is a weights file, or "torchvision" / "timm" / "keras" /
  "keras_notop" for the standard file in ~/.cache/ucsh_jax (downloaded there when online;
  offline the error says which file to put where). A conv-base (notop) file with
  `model.pooling = "fc7"` is refused: it has no fc6/fc7.
  """
  if not uses_backbone(config):
    return None, preprocessing_lib.UNIT
  if not config.model.pretrained:
    return None, preprocessing_lib.IMAGENET
  path = config.model.pretrained
  if not os.path.exists(path) and path in download.NAMES:
    path = models.download_pretrained(path, WEIGHTS_CACHE)
  variables, preprocessing = models.load_pretrained(path)
  if config.model.pooling == "fc7" and "fc6" not in variables["params"]:
    raise errors.UserError(
        f"{path} holds the VGG16 conv base alone (no fc6/fc7) but config.model.pooling='fc7' "
        "needs them: set --config.model.pooling=avg_conv5_3 (or avg_pool5) and "
        "--config.model.top=fc")
  return variables, preprocessing


def init_params(model, config: ml_collections.ConfigDict, sample_inputs: np.ndarray,
                key: jax.Array, pretrained: Optional[dict]):
  """Random initialisation; the VGG16 part replaced by the pretrained weights when given."""
  params = jax.jit(lambda k, x: model.init({"params": k}, x, train=False)["params"])(
      key, jnp.asarray(sample_inputs))
  if pretrained is not None:
    params = models.with_pretrained_backbone(params, pretrained["params"])
  return params


def itq_hash_layer(params, train_features_NxD: np.ndarray, bits: int, key: jax.Array):
  """Params whose hash layer is ITQ fit on the training features: epoch 0 encodes like ITQ.

  kernel = P R (d, k), bias = -mean P R, so h = (x - mean) P R with ITQ's PCA directions P and
  rotation R, and sign(h) are ITQ's codes of x (the features the hash layer sees).
  """
  fit = itq.fit(jnp.asarray(train_features_NxD, jnp.float32), bits, key)
  kernel_DxK = jnp.matmul(fit.pca, fit.rotation, precision=jax.lax.Precision.HIGHEST)
  bias_K = -jnp.matmul(fit.mean, kernel_DxK, precision=jax.lax.Precision.HIGHEST)
  hash_params = {"kernel": kernel_DxK.astype(jnp.float32), "bias": bias_K.astype(jnp.float32)}
  head = {**params["head"], "hash": hash_params}
  return {**params, "head": head}


def _schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, scale: float):
  opt = config.optimizer
  return optax.exponential_decay(
      scale * opt.learning_rate,
      transition_steps=max(1, opt.decay_every_epochs * steps_per_epoch),
      decay_rate=opt.decay_factor, staircase=True)


def _base_optimizer(config: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
  opt = config.optimizer
  if opt.name == "adam":
    return optax.adamw(schedule, weight_decay=opt.weight_decay) if opt.weight_decay else (
        optax.adam(schedule))
  return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(schedule, momentum=opt.momentum))


def frozen_layers(config: ml_collections.ConfigDict) -> Tuple[str, ...]:
  """The VGG16 layers below `config.model.trainable_from` (none when it is "")."""
  if not config.model.trainable_from or not uses_backbone(config):
    return ()
  names = vgg.layer_names(config.model.pooling)
  return names[:names.index(config.model.trainable_from)]


def _param_labels(params, frozen: Tuple[str, ...]) -> Dict:
  """A label per top-level entry, and per layer of the backbone: "frozen", "backbone",
  "features" (the top, or the backbone without its own group) or "head"."""
  labels = {}
  for name, subtree in params.items():
    if name == "backbone":
      labels[name] = {layer: "frozen" if layer in frozen else "backbone" for layer in subtree}
    else:
      labels[name] = "features" if name in FEATURE_PARAMS else "head"
  return labels


def _group_or_label(method: methods.Method, path, labels: Dict) -> str:
  keys = tuple(str(getattr(k, "key", k)) for k in path)
  group = method.param_group(keys)
  if group != methods.MAIN_GROUP:
    return group
  label = labels[keys[0]]
  return label if isinstance(label, str) else label[keys[1]]


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   method: Optional[methods.Method] = None) -> optax.GradientTransformation:
  """Adam (default) or SGD with momentum; learning rate step-decayed every few epochs.

  The parameters that produce the features (`FEATURE_PARAMS`: the VGG16 or the trainable top)
  learn at `config.optimizer.feature_lr_scale` times the learning rate of the others (the
  hash layer and the decoder), the VGG16 at `config.optimizer.backbone_lr_scale` times that
  again. The layers below `config.model.trainable_from` get no update and no optimiser state.
  The parameters of a `method`'s other groups (`Method.param_group`) get its optimisers.
  """
  opt = config.optimizer
  scale, frozen = opt.feature_lr_scale, frozen_layers(config)
  groups = method.group_optimizers(steps_per_epoch) if method is not None else {}
  if not frozen and opt.backbone_lr_scale == 1.0 and not groups:
    if scale == 1.0:
      return _base_optimizer(config, _schedule(config, steps_per_epoch, 1.0))
    label = lambda params: {name: "features" if name in FEATURE_PARAMS else "head"
                            for name in params}
    return optax.multi_transform(
        {"features": _base_optimizer(config, _schedule(config, steps_per_epoch, scale)),
         "head": _base_optimizer(config, _schedule(config, steps_per_epoch, 1.0))}, label)
  backbone_scale = scale * opt.backbone_lr_scale

  def labels(params):
    own = _param_labels(params, frozen)
    if not groups:
      return own
    # Per leaf: the method's group, or the label of the entry (layer) the leaf is under.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _group_or_label(method, path, own), params)

  return optax.multi_transform(
      {"frozen": optax.set_to_zero(),
       "backbone": _base_optimizer(config, _schedule(config, steps_per_epoch, backbone_scale)),
       "features": _base_optimizer(config, _schedule(config, steps_per_epoch, scale)),
       "head": _base_optimizer(config, _schedule(config, steps_per_epoch, 1.0)), **groups},
      labels)


def create_train_state(model, params, tx: optax.GradientTransformation) -> train_state.TrainState:
  return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def abstract_train_state(model, sample_inputs: np.ndarray, tx: optax.GradientTransformation,
                         sharding: jax.sharding.Sharding) -> train_state.TrainState:
  """The train state's shapes and dtypes with `sharding`, computed without initialising it."""
  def create():
    params = model.init({"params": jax.random.key(0)}, jnp.asarray(sample_inputs),
                        train=False)["params"]
    return create_train_state(model, params, tx)

  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      jax.eval_shape(create))
