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
from ucsh_jax import ops
from ucsh_jax import preprocessing as preprocessing_lib
from ucsh_jax.baselines import itq
from ucsh_jax.models import download
from ucsh_jax.models import ucsh as ucsh_model
from ucsh_jax.models import vgg
from ucsh_jax.train_step import LossWeights
from ucsh_jax.train_step import TARGETS

ABLATIONS = ("", "V", "C", "S", "R")
# config.model.pretrained may name a standard file (`download.NAMES`) instead of giving its path;
# it is then looked up in (or downloaded to) WEIGHTS_CACHE.
WEIGHTS_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ucsh_jax")
BACKBONES = ("vgg16", "none")
OPTIMIZERS = ("adam", "sgd")
BALANCES = ("paper", "mean")
TOPS = ("none", "fc")
HASH_INITS = ("random", "itq")
CODE_ACTIVATIONS = ("sign", "tanh")
# Parameters under these top-level names produce the features x (the VGG16 or the trainable top);
# their learning rate is config.optimizer.feature_lr_scale times the others' (the VGG16's also
# times config.optimizer.backbone_lr_scale).
FEATURE_PARAMS = ("backbone", "top")


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
  choices = [("loss.balance", config.loss.balance, BALANCES),
             ("similarity.target", config.similarity.target, TARGETS),
             ("model.top", config.model.top, TOPS),
             ("model.hash_init", config.model.hash_init, HASH_INITS),
             ("model.code_activation", config.model.code_activation, CODE_ACTIVATIONS),
             ("kmeans_metric", config.kmeans_metric, ops.KMEANS_METRICS)]
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
  for name in ("bits", "batch_size", "num_epochs", "num_clusters", "kmeans_iters",
               "kmeans_inits", "threshold_samples", "checkpoint_every_epochs"):
    if config[name] < 1:
      raise errors.UserError(f"config.{name}={config[name]} must be at least 1")
  if config.bits % 8:
    raise errors.UserError(
        f"config.bits={config.bits} must be a multiple of 8: the codes are packed into bytes "
        "for the Hamming index that encode, search and the report use")
  if config.loss.reference_batch < 1:
    raise errors.UserError(f"config.loss.reference_batch={config.loss.reference_batch} must be "
                           "at least 1")
  if config.similarity.num_neighbours < 0:
    raise errors.UserError(f"config.similarity.num_neighbours="
                           f"{config.similarity.num_neighbours} must be >= 0 (0: a tenth of "
                           "the training set)")
  if config.batch_size % num_devices:
    raise errors.UserError(f"config.batch_size={config.batch_size} must be a multiple of the "
                           f"{num_devices} devices")
  if config.eval.batch_size % num_devices:
    raise errors.UserError(f"config.eval.batch_size={config.eval.batch_size} must be a multiple of "
                           f"the {num_devices} devices")


def check_hash_init(config: ml_collections.ConfigDict, feature_dim: int) -> None:
  """UserError unless `config.model.hash_init` can start a hash layer of `config.bits` bits on
  features of width `feature_dim` (ITQ keeps `bits` principal directions of the features)."""
  if config.model.hash_init == "itq" and config.bits > feature_dim:
    raise errors.UserError(
        f"config.bits={config.bits} with config.model.hash_init='itq': ITQ needs at most as "
        f"many bits as the {feature_dim} dimensions of the features the hash layer sees",
        hint=f"use config.bits <= {feature_dim}, or config.model.hash_init='random'")


def num_neighbours(config: ml_collections.ConfigDict, num_train: int) -> int:
  """m of the neighbour-rank targets; 0 when the targets are not "neighbours".

  config.similarity.num_neighbours, or when that is 0 a tenth of the training set at up to 16
  bits and a twentieth at more bits (longer codes can keep a tighter neighbourhood: measured
  on the dev features, 64 bits, m = 50 gave MAP 0.308 and m = 100 0.301; at 16 bits m = 100
  0.280 and m = 50 0.254; the digits demo agrees).
  """
  if config.similarity.target != "neighbours":
    return 0
  derived = max(1, num_train // (10 if config.bits <= 16 else 20))
  return min(num_train, config.similarity.num_neighbours or derived)


def ablated_weights(config: ml_collections.ConfigDict) -> Tuple[float, float, float]:
  """alpha, beta, gamma of eq. 7 after the ablation (UCSH-V: alpha=0, -C: beta=0, -S: gamma=0)."""
  return (0.0 if config.ablation == "V" else config.loss.alpha,
          0.0 if config.ablation == "C" else config.loss.beta,
          0.0 if config.ablation == "S" else config.loss.gamma)


def loss_weights(config: ml_collections.ConfigDict,
                 feature_dim: Optional[int] = None) -> LossWeights:
  """The weights of the step's mean-form terms (see `train_step.ucsh_losses`).

  The step minimises M_2 + w_rec M_rec + w_kl M_kl + w_C M_C + w_S M_S, each M the mean form
  of a term of eq. 7 over a global batch of n (M_2 = L_2 / (n^2 k^2), M_rec = L_rec / (n d),
  M_kl = L_kl / (n k), M_C = L_C / (n k), M_S = L_S / n^2, with the literal sums L of the
  paper, L_V = L_rec + L_kl, d the feature dimension, k the bits).

  `config.loss.balance = "paper"` derives the weights from alpha, beta, gamma at the batch
  n_0 = `config.loss.reference_batch` (the paper's 24):
    w_rec = alpha d / (n_0 k^2), w_kl = alpha / (n_0 k), w_C = beta / (n_0 k), w_S = gamma / k^2,
  so that at n = n_0 the objective is exactly (L_2 + alpha L_V + beta L_C + gamma L_S) /
  (n_0^2 k^2): the paper's eq. 7 up to one positive factor, at every code length, and the same
  on any number of devices (every term is a mean over the global batch). At another batch size
  the terms keep the relative weights they have at n_0.
  `"mean"` puts alpha, beta, gamma on the mean forms directly (w_rec = w_kl = alpha).
  `feature_dim` defaults to the VGG16's feature width; without the backbone it must be given.
  """
  if feature_dim is None:
    if not uses_backbone(config):
      raise ValueError("loss_weights needs feature_dim for a model without the VGG16 backbone")
    feature_dim = backbone_feature_dim(config)
  alpha, beta, gamma = ablated_weights(config)
  if config.loss.balance == "mean":
    return LossWeights(reconstruction=alpha, kl=alpha, clustering=beta, separating=gamma)
  n0, k = config.loss.reference_batch, config.bits
  return LossWeights(reconstruction=alpha * feature_dim / (n0 * k * k), kl=alpha / (n0 * k),
                     clustering=beta / (n0 * k), separating=gamma / (k * k))


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


def uses_backbone(config: ml_collections.ConfigDict) -> bool:
  return config.data.name != "features" and config.model.backbone == "vgg16"


def backbone_feature_dim(config: ml_collections.ConfigDict) -> int:
  """Width of the VGG16's features x: fc7's, or the pooled conv maps' (and the top's)."""
  if config.model.pooling == "fc7":
    return vgg.scaled_width(vgg.FC_FEATURES, config.model.width)
  return vgg.scaled_width(512, config.model.width)


def build_model(config: ml_collections.ConfigDict, feature_dim: Optional[int] = None,
                start_layer: str = vgg.CONV_NAMES[0]):
  """UCSH on images, or the hash head and decoder alone on feature vectors or flat pixels.

  `feature_dim` is the size of a flattened input; needed only without the VGG16 backbone.
  `start_layer`: the UCSH applied from that VGG16 layer on, to the activations entering it
  (what a frozen prefix computed once gives, see `prefix_cache`); its parameters are the
  whole network's, of which it reads the layers it runs.
  """
  code_activation = "tanh" if config.ablation == "R" else config.model.code_activation
  dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
  if not uses_backbone(config):
    # Dropout only with a trainable top (before it, as before fc7, and before the hash layer):
    # on fixed inputs it would only add noise.
    rate = config.model.dropout_rate if config.model.top != "none" else 0.0
    top = ucsh_model.FeatureTop(dropout_rate=rate, dtype=dtype, name="top") if (
        config.model.top == "fc") else None
    return FlatInputHashNet(models.HashHead(
        bits=config.bits, feature_dim=feature_dim, decoder_hidden=config.model.decoder_hidden,
        code_activation=code_activation, dropout_rate=rate, dtype=dtype), top=top)
  return models.UCSH(bits=config.bits, width=config.model.width,
                     pooled_size=config.model.pooled_size,
                     decoder_hidden=config.model.decoder_hidden,
                     code_activation=code_activation, dropout_rate=config.model.dropout_rate,
                     dtype=dtype, pooling=config.model.pooling, top=config.model.top == "fc",
                     start_layer=start_layer)


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


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam (default) or SGD with momentum; learning rate step-decayed every few epochs.

  The parameters that produce the features (`FEATURE_PARAMS`: the VGG16 or the trainable top)
  learn at `config.optimizer.feature_lr_scale` times the learning rate of the others (the
  hash layer and the decoder), the VGG16 at `config.optimizer.backbone_lr_scale` times that
  again. The layers below `config.model.trainable_from` get no update and no optimiser state.
  """
  opt = config.optimizer
  scale, frozen = opt.feature_lr_scale, frozen_layers(config)
  if not frozen and opt.backbone_lr_scale == 1.0:
    if scale == 1.0:
      return _base_optimizer(config, _schedule(config, steps_per_epoch, 1.0))
    label = lambda params: {name: "features" if name in FEATURE_PARAMS else "head"
                            for name in params}
    return optax.multi_transform(
        {"features": _base_optimizer(config, _schedule(config, steps_per_epoch, scale)),
         "head": _base_optimizer(config, _schedule(config, steps_per_epoch, 1.0))}, label)
  backbone_scale = scale * opt.backbone_lr_scale
  return optax.multi_transform(
      {"frozen": optax.set_to_zero(),
       "backbone": _base_optimizer(config, _schedule(config, steps_per_epoch, backbone_scale)),
       "features": _base_optimizer(config, _schedule(config, steps_per_epoch, scale)),
       "head": _base_optimizer(config, _schedule(config, steps_per_epoch, 1.0))},
      lambda params: _param_labels(params, frozen))


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
