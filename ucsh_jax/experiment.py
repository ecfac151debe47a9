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
from ucsh_jax import models
from ucsh_jax import preprocessing as preprocessing_lib
from ucsh_jax.train_step import LossWeights

ABLATIONS = ("", "V", "C", "S", "R")
# config.model.pretrained may name a standard file instead of giving its path; it is then looked
# up in (or downloaded to) WEIGHTS_CACHE.
PRETRAINED_NAMES = ("torchvision", "timm", "keras")
WEIGHTS_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ucsh_jax")
BACKBONES = ("vgg16", "none")
OPTIMIZERS = ("adam", "sgd")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises UserError naming the config field that makes the run impossible."""
  if config.ablation not in ABLATIONS:
    raise errors.UserError(f"config.ablation={config.ablation!r}; expected one of {ABLATIONS}")
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
  for name in ("bits", "batch_size", "num_epochs", "num_clusters", "kmeans_iters",
               "threshold_samples"):
    if config[name] < 1:
      raise errors.UserError(f"config.{name}={config[name]} must be at least 1")
  if config.batch_size % num_devices:
    raise errors.UserError(f"config.batch_size={config.batch_size} must be a multiple of the "
                           f"{num_devices} devices")
  if config.eval.batch_size % num_devices:
    raise errors.UserError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple of "
                           f"the {num_devices} devices")


def loss_weights(config: ml_collections.ConfigDict) -> LossWeights:
  """alpha, beta, gamma of eq. 7 after the ablation (UCSH-V: alpha=0, -C: beta=0, -S: gamma=0)."""
  return LossWeights(alpha=0.0 if config.ablation == "V" else config.loss.alpha,
                     beta=0.0 if config.ablation == "C" else config.loss.beta,
                     gamma=0.0 if config.ablation == "S" else config.loss.gamma)


class FlatInputHashNet(nn.Module):
  """The hash head and decoder on inputs used as the features: vectors, or images flattened.

  Returns {"features" (n, d), "logits", "codes", "reconstruction"} like UCSH.
  """
  head: nn.Module

  def __call__(self, inputs: jax.Array, *, train: bool,
               code_noise: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
    features = inputs.reshape(inputs.shape[0], -1).astype(jnp.float32)
    return {"features": features, **self.head(features, train=train, code_noise=code_noise)}


def uses_backbone(config: ml_collections.ConfigDict) -> bool:
  return config.data.name != "features" and config.model.backbone == "vgg16"


def build_model(config: ml_collections.ConfigDict, feature_dim: Optional[int] = None):
  """UCSH on images, or the hash head and decoder alone on feature vectors or flat pixels.

  `feature_dim` is the size of a flattened input; needed only without the VGG16 backbone.
  """
  code_activation = "tanh" if config.ablation == "R" else "sign"
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  if not uses_backbone(config):
    return FlatInputHashNet(models.HashHead(
        bits=config.bits, feature_dim=feature_dim, decoder_hidden=config.model.decoder_hidden,
        code_activation=code_activation, dropout_rate=0.0, dtype=dtype))
  return models.UCSH(bits=config.bits, width=config.model.width,
                     pooled_size=config.model.pooled_size,
                     decoder_hidden=config.model.decoder_hidden,
                     code_activation=code_activation, dropout_rate=config.model.dropout_rate,
                     dtype=dtype)


def preprocessing_for(config: ml_collections.ConfigDict
                      ) -> Tuple[Optional[dict], preprocessing_lib.Preprocessing]:
  """(pretrained VGG16 variables or None, the pixel preprocessing the network expects).

  `config.model.pretrained` is a weights file, or "torchvision" / "timm" / "keras" for the
  standard file in ~/.cache/ucsh_jax (downloaded there when online; offline the error says which
  file to put where).
  """
  if not uses_backbone(config):
    return None, preprocessing_lib.UNIT
  if not config.model.pretrained:
    return None, preprocessing_lib.IMAGENET
  path = config.model.pretrained
  if not os.path.exists(path) and path in PRETRAINED_NAMES:
    path = models.download_pretrained(path, WEIGHTS_CACHE)
  return models.load_pretrained(path)


def init_params(model, config: ml_collections.ConfigDict, sample_inputs: np.ndarray,
                key: jax.Array, pretrained: Optional[dict]):
  """Random initialisation; the VGG16 part replaced by the pretrained weights when given."""
  params = jax.jit(lambda k, x: model.init({"params": k}, x, train=False)["params"])(
      key, jnp.asarray(sample_inputs))
  if pretrained is not None:
    params = models.with_pretrained_backbone(params, pretrained["params"])
  return params


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam (default) or SGD with momentum; learning rate step-decayed every few epochs."""
  opt = config.optimizer
  schedule = optax.exponential_decay(
      opt.learning_rate, transition_steps=max(1, opt.decay_every_epochs * steps_per_epoch),
      decay_rate=opt.decay_factor, staircase=True)
  if opt.name == "adam":
    tx = optax.adamw(schedule, weight_decay=opt.weight_decay) if opt.weight_decay else (
        optax.adam(schedule))
  else:
    tx = optax.chain(optax.add_decayed_weights(opt.weight_decay),
                     optax.sgd(schedule, momentum=opt.momentum))
  return tx


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
