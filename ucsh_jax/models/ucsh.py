"""The UCSH network: VGG16 features -> hash layer -> codes, with a binary-latent VAE decoder."""

import functools
from typing import Any, Dict, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ucsh_jax import errors
from ucsh_jax import ops
from ucsh_jax.models import vgg

CODE_ACTIVATIONS = ("sign", "tanh")


class HashHead(nn.Module):
  """Hash layer h = W dropout(x) + b, codes b = sign_ste(h), and the VAE decoder.

  The decoder reconstructs the features from a code z: in train mode z is drawn from the
  encoder q(b|x) = Bernoulli(sigmoid(h)) (the 'sample' rng) and mapped to +-1, with a
  straight-through gradient to its mean 2 sigmoid(h) - 1; in eval mode z = sign(h). With
  code_activation "tanh" (UCSH-R, the continuous relaxation) the train-mode decoder input is
  the relaxed code tanh(h) itself: no sample and no sign anywhere on the train path.

  Attributes:
    bits: code length k.
    feature_dim: d, the size of the features to reconstruct.
    decoder_hidden: width of the decoder's ReLU hidden layer.
    code_activation: "sign" (UCSH) or "tanh" (the UCSH-R relaxation) for "codes".
    dropout_rate: dropout on the features before the hash layer in train mode (the
      'dropout' rng); 0 disables it.
    dtype: computation dtype; parameters stay float32.

  Submodules: `hash` (d -> k), `decoder_hidden` (k -> decoder_hidden), `decoder_out`
  (decoder_hidden -> d), all Dense.
  """

  bits: int
  feature_dim: int
  decoder_hidden: int = 1024
  code_activation: str = "sign"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool,
               code_noise: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
    """Encodes features and reconstructs them from a code.

    Args:
      features: (n, feature_dim) features x (fc7 after ReLU).
      train: enables dropout and the sampled decoder code.
      code_noise: optional (n, bits) uniform [0, 1) noise for the Bernoulli sample in train
        mode; by default drawn from the 'sample' rng. Passing noise drawn per example makes the
        sample independent of how a batch is split over devices. Unused with "tanh".

    Returns:
      "logits" (n, bits) hash-layer output h; "codes" (n, bits) sign_ste(h), or tanh(h)
      for code_activation "tanh"; "reconstruction" (n, feature_dim); all float32.
    """
    if self.code_activation not in CODE_ACTIVATIONS:
      raise ValueError(
          f"code_activation must be one of {CODE_ACTIVATIONS}, got {self.code_activation!r}")
    if features.ndim != 2 or features.shape[1] != self.feature_dim:
      raise ValueError(f"HashHead expects features of shape (n, {self.feature_dim}), "
                       f"got {features.shape}")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(features.astype(self.dtype))
    logits_NxK = dense(self.bits, name="hash")(x).astype(jnp.float32)
    if self.code_activation == "tanh":
      codes_NxK = jnp.tanh(logits_NxK)
    else:
      codes_NxK = ops.sign_ste(logits_NxK)

    if train and self.code_activation == "tanh":
      latent_NxK = codes_NxK
    elif train:
      mean_NxK = 2.0 * jax.nn.sigmoid(logits_NxK) - 1.0
      # u < sigmoid(h) happens with probability sigmoid(h): a Bernoulli draw as +-1.
      if code_noise is None:
        code_noise = jax.random.uniform(self.make_rng("sample"), logits_NxK.shape)
      elif code_noise.shape != logits_NxK.shape:
        raise ValueError(f"code_noise has shape {code_noise.shape}, expected {logits_NxK.shape}")
      sample_NxK = jnp.where(code_noise < jax.nn.sigmoid(logits_NxK), 1.0, -1.0)
      latent_NxK = mean_NxK + jax.lax.stop_gradient(sample_NxK - mean_NxK)
    else:
      latent_NxK = ops.sign_ste(logits_NxK)
    hidden = nn.relu(dense(self.decoder_hidden, name="decoder_hidden")(latent_NxK))
    reconstruction_NxD = dense(self.feature_dim, name="decoder_out")(hidden)
    return {"logits": logits_NxK, "codes": codes_NxK,
            "reconstruction": reconstruction_NxD.astype(jnp.float32)}


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(*shape, dtype=dtype)


class FeatureTop(nn.Module):
  """A trainable layer that plays fc7 on fixed input features: relu(W dropout(x) + b).

  W (d, d) starts as the identity and b at 0, so on non-negative inputs (ReLU features) the
  top starts as the identity map and keeps the input's cosine structure; training then adapts
  the features the similarities, the threshold and the clusters are computed from.

  Attributes:
    dropout_rate: dropout on the input in train mode (the 'dropout' rng), as VGG16 drops fc6
      before fc7; 0 disables it.
    dtype: computation dtype; parameters stay float32.

  Submodule: `fc` (d -> d, Dense).
  """

  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """(n, d) features -> (n, d) float32 adapted features (after ReLU)."""
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x.astype(self.dtype))
    y = nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=_identity_init, name="fc")(x)
    return nn.relu(y).astype(jnp.float32)


class UCSH(nn.Module):
  """VGG16 (submodule `backbone`), optionally a FeatureTop (`top`), then a HashHead (`head`).

  With pooling "fc7" the features x are VGG16's fc7; with an average pooling of the conv base
  ("avg_conv5_3", "avg_pool5": the notop weights have no fc6/fc7) they are the pooled maps,
  passed through a trainable FeatureTop when `top` is set (W = I at the start), whose output
  the similarities, the threshold, the clusters and the decoder's target are then.

  Attributes:
    bits: code length k.
    width: VGG16 width multiplier (1.0 for the pretrained network).
    pooled_size: side of VGG16's adaptive average pool (pooling "fc7").
    decoder_hidden: width of the decoder's hidden layer.
    code_activation: "sign" or "tanh" (UCSH-R).
    dropout_rate: dropout after fc6, before the top and before the hash layer, in train mode.
    dtype: computation dtype; parameters stay float32.
    pooling: one of `vgg.POOLINGS`.
    top: put a FeatureTop after the average pooling (not with "fc7", which has fc7).
    start_layer: the first VGG16 layer run (see `vgg.VGG16`): with a frozen prefix computed
      once, the network is applied from the layer after it to the activations it gave.
    head: the module on the features (a hashing method's head, see `ucsh_jax.methods`); None
      is a HashHead from the attributes above.
  """

  bits: int
  width: float = 1.0
  pooled_size: int = 7
  decoder_hidden: int = 1024
  code_activation: str = "sign"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  pooling: str = "fc7"
  top: bool = False
  start_layer: str = vgg.CONV_NAMES[0]
  head: Optional[nn.Module] = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool,
               code_noise: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
    """Encodes images; train mode needs the 'dropout' rng and 'sample' (or `code_noise`).

    Args:
      images: (n, H, W, 3) normalised float images (H, W >= `vgg.min_image_size`), or the
        activations entering `start_layer`.
      train: enables dropout and the decoder's sampled code.
      code_noise: optional (n, bits) uniform noise for the decoder's sample (see HashHead).

    Returns:
      "features" (n, F): fc7 after ReLU (F = 4096 * width), or the pooled conv maps (F = 512 *
      width) or the top's output on them; "similarity_features" (n, F) the same without
      dropout (equal to "features" in eval mode); and the head's outputs (HashHead's
      "logits", "codes" and "reconstruction", float32).
    """
    if self.top and self.pooling == "fc7":
      raise ValueError("top is for the average poolings; pooling 'fc7' has VGG16's own fc7")
    out = vgg.VGG16(num_classes=None, width=self.width, pooled_size=self.pooled_size,
                    dropout_rate=self.dropout_rate, dtype=self.dtype, pooling=self.pooling,
                    start_layer=self.start_layer, name="backbone")(images, train=train)
    if self.pooling == "fc7":
      features, clean = out["fc7"], self._dropout_free_fc7(out, train=train)
    elif self.top:
      top = FeatureTop(dropout_rate=self.dropout_rate, dtype=self.dtype, name="top")
      features = top(out["pooled"], train=train)
      clean = features if not train or self.dropout_rate == 0.0 else top(out["pooled"],
                                                                         train=False)
    else:
      features = clean = out["pooled"]
    head = self.head or HashHead(bits=self.bits, feature_dim=features.shape[-1],
                                 decoder_hidden=self.decoder_hidden,
                                 code_activation=self.code_activation,
                                 dropout_rate=self.dropout_rate, dtype=self.dtype, name="head")
    return {"features": features, "similarity_features": clean,
            **head(features, train=train, code_noise=code_noise)}

  def _dropout_free_fc7(self, fc: Dict[str, jax.Array], *, train: bool) -> jax.Array:
    """fc7 as in eval mode, relu(fc6 W_7 + b_7) with the backbone's own fc7 weights.

    In train mode fc7 sees dropout(fc6); this recomputes only the fc7 layer from fc6 (one
    matmul, no second backbone pass), so the similarities match those s_t was estimated on.
    """
    if not train or self.dropout_rate == 0.0:
      return fc["fc7"]
    fc7 = self.variables["params"]["backbone"]["fc7"]
    x = fc["fc6"].astype(self.dtype)
    y = (jnp.matmul(x, jnp.asarray(fc7["kernel"], self.dtype))
         + jnp.asarray(fc7["bias"], self.dtype)[None, :])
    return nn.relu(y).astype(jnp.float32)


def with_pretrained_backbone(ucsh_params: Mapping[str, Any],
                             vgg_params: Mapping[str, Any]) -> Dict[str, Any]:
  """Returns a copy of UCSH params whose backbone (conv1_1 .. fc7) comes from VGG16 params.

  Args:
    ucsh_params: `variables["params"]` of UCSH, with entries "backbone" and "head".
    vgg_params: `variables["params"]` of VGG16 (e.g. from `load_pretrained`); fc8 is dropped.
      Conv-base weights (no fc6/fc7) fit a UCSH with an average pooling.

  Returns:
    New params; the head is kept, every backbone array is replaced by the pretrained one
    cast to the model's parameter dtype.

  Raises:
    ValueError: naming the missing or unexpected layers, or the parameter and both shapes.
  """
  if "backbone" not in ucsh_params:
    raise errors.UserError("ucsh_params has no 'backbone' entry (keys: "
                           f"{sorted(ucsh_params)}); pass the UCSH variables['params']")
  backbone = ucsh_params["backbone"]
  missing = sorted(set(backbone) - set(vgg_params))
  # fc8 is ImageNet's classifier; an average-pooling backbone also drops fc6 and fc7.
  dropped = {"fc8"} if "fc6" in backbone else {"fc6", "fc7", "fc8"}
  unexpected = sorted(set(vgg_params) - set(backbone) - dropped)
  if missing or unexpected:
    raise errors.UserError(
        f"pretrained VGG16 params do not match the UCSH backbone: missing layers "
        f"{missing}, unexpected layers {unexpected}")
  new_backbone, problems = {}, []
  for layer, layer_params in backbone.items():
    if set(layer_params) != set(vgg_params[layer]):
      raise errors.UserError(
          f"pretrained layer '{layer}' has parameters {sorted(vgg_params[layer])}, "
          f"the UCSH backbone has {sorted(layer_params)}")
    new_backbone[layer] = {}
    for name, current in layer_params.items():
      pretrained = vgg_params[layer][name]
      if tuple(pretrained.shape) != tuple(current.shape):
        problems.append(f"backbone/{layer}/{name}: pretrained shape {tuple(pretrained.shape)}, "
                      f"model shape {tuple(current.shape)}")
      else:
        new_backbone[layer][name] = jnp.asarray(pretrained, current.dtype)
  if problems:
    raise errors.UserError("pretrained VGG16 params do not fit the UCSH backbone (another width or "
                           "pooled size?): " + "; ".join(problems))
  return {**ucsh_params, "backbone": new_backbone}
