"""TBH: Auto-Encoding Twin-Bottleneck Hashing (Shen, Qin, Chen, Yu, Liu, Zhu, Shao, CVPR 2020,
arXiv 2002.11930), as the authors' TensorFlow 2 code has it (github.com/ymcidence/TBH, commit
778dd1c: model/tbh.py, layer/*.py, train/tbh_train.py), on the shared step.

The head on the features x (n, d) (the authors train on fixed fc7 features):
  encoder     z = relu(W_1 x + c_1) (n, H)                      "encoder_hidden", H = 1024
  binary      h = W_b z + c_b (n, k): the "logits", sign(h) the code at evaluation
              b = (sign(sigmoid(h) - eps) + 1) / 2 in {0, 1}     `ops.stochastic_binary`
              gradient d h = sigmoid'(h) d b (straight-through to the Bernoulli mean)
  continuous  c = sigmoid(W_c z + c_c) (n, C)                    "encoder_continuous", C = 512
  graph       A_ij = (1 - d_H(b_i, b_j) / k) ** 1.4 over the global batch (N, N)
                                                                 `ops.hamming_adjacency`
              L = D^-1/2 A D^-1/2, D = A 1 (+1e-8)               `ops.normalized_adjacency`
  twin        z' = sigmoid(L (W_g c + c_g)) (n, C)                "gcn": one graph convolution
  decoder     x^ = relu(W_4 relu(W_3 z' + c_3) + c_4) (n, d)      "decoder_hidden", "decoder_out"
  critics     D_b(v) = sigmoid(w_b . v + a_b) on b vs. samples of Bernoulli(1/2)^k,
              D_c(v) = sigmoid(w_c . v + a_c) on z' vs. samples of U[0, 1]^C
                                                      "critic_binary", "critic_continuous"
The binary code reaches the decoder only through the graph: the continuous bottleneck is
smoothed over the items whose codes are close, so the codes are trained to say who is
whose neighbour.

The losses (train/tbh_train.py), on a global batch of N:
  rec    = 1/2 sum_i ||x^_i - x_i||^2            (their reduce_mean(l2_loss(.)): a sum, not a mean)
  adv(D, real, fake) = mean_i BCE(1, D(real_i)) + mean_i BCE(0, D(fake_i))  (Keras' BCE on
                       probabilities, clipped at 1e-7: `ops.binary_cross_entropy`)
  actor  = rec - adv(D_b, samples, b) - adv(D_c, samples, z')      -> group "main"
  critic = adv(D_b, samples, b) + adv(D_c, samples, z')            -> group "critic"
The authors' step takes both losses from one forward pass and applies the actor's gradient to
the encoder, graph convolution and decoder and the critic's to the two discriminators, each with
its own Adam (learning rate 1e-4 both), in the same step: exactly the shared step's parameter
groups (`param_group`: the head's "critic_*" layers are "critic"). No alternation is lost.

Decisions (what the paper or the code leave open, or where this port departs):
  1. The code's graph, A = (1 - d_H / k) ** 1.4 (`tbh.adjacency_power`), not the paper's power 1;
     the graph spans the global batch (all-gathered), so 1 device equals 8.
  2. The binary neuron's threshold eps (`tbh.code_noise`): "uniform" (default) draws eps ~ U[0, 1)
     per bit and example, the paper's stochastic neuron (Sec. 3.2); "none" uses eps = 1/2, the
     authors' released code (the draw is commented out there). Both evaluate with sign(h).
     All the randomness (eps, the critics' samples) is drawn per example from
     `base.example_keys(key, step, index)`, independent of the device layout.
  3. The reconstruction target is the features x with their gradient stopped: with fixed
     features (the authors' setting) this is their loss; with a trainable top or VGG16 the
     features learn through the encoder only (reconstructing a moving target could shrink it).
  4. rec keeps the authors' scale (a sum over the batch and the d features), so the
     adversarial terms weigh what they weigh in their step at the same batch and width.
  5. Adam as optax's (eps 1e-8 on the bias-corrected moments) where Keras' is eps 1e-7 on the
     uncorrected ones: a difference of the first steps only.
  6. |c| in the Hamming distance has derivative 0 at c = 0 as TensorFlow's (see the op).
  7. Dropout: the run's dropout before the encoder (0 on feature files, as the authors).
  8. The hash layer cannot start as ITQ (`model.hash_init = "itq"` is refused): TBH's code
     layer reads the encoder's hidden layer, not the features.

tests/fixtures/make_tbh_reference.py computes the losses and gradients of the authors' own
model on one small batch; tests/test_method_tbh.py checks this head against them.
"""

import functools
from typing import Any, Dict, Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ucsh_jax import errors
from ucsh_jax import ops
from ucsh_jax.methods import base
from ucsh_jax.parallel import DATA_AXIS

CRITIC_GROUP = "critic"
CODE_NOISES = ("uniform", "none")
# The head's layers the critic group owns (param paths ("head", <layer>, ...)).
CRITIC_LAYERS = ("critic_binary", "critic_continuous")


class TBHHead(nn.Module):
  """TBH's encoder, twin bottleneck, decoder and the two discriminators (see the module).

  Attributes:
    bits: k. feature_dim: d. hidden_dim: H, the encoder's and decoder's hidden width.
    continuous_dim: C, the continuous bottleneck. adjacency_power: the graph's exponent.
    dropout_rate: dropout on the features in train mode ('dropout' rng).
    dtype: computation dtype (params float32).
    axis_name: the mesh axis the graph is all-gathered over in train mode (None: the local
      batch is the whole batch).

  Called `head(x, train=..., code_noise=...)`; in train mode `code_noise` is a dict
  {"threshold": (n, k) eps, "binary": (n, k) {0, 1} samples, "continuous": (n, C) samples}.
  Eval mode returns {"logits"}; train mode also "binary" (n, k) b, "bottleneck" (n, C) z',
  "reconstruction" (n, d), and the critics' probabilities "critic_binary_real" / "_fake" and
  "critic_continuous_real" / "_fake" (n,).
  """
  bits: int
  feature_dim: int
  hidden_dim: int = 1024
  continuous_dim: int = 512
  adjacency_power: float = 1.4
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  axis_name: Optional[str] = DATA_AXIS

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool,
               code_noise: Optional[Dict[str, jax.Array]] = None) -> Dict[str, jax.Array]:
    if features.ndim != 2 or features.shape[1] != self.feature_dim:
      raise ValueError(f"TBHHead expects features of shape (n, {self.feature_dim}), "
                       f"got {features.shape}")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(features.astype(self.dtype))
    hidden = nn.relu(dense(self.hidden_dim, name="encoder_hidden")(x))
    logits_NxK = dense(self.bits, name="encoder_code")(hidden).astype(jnp.float32)
    initializing = self.is_initializing()
    if not train and not initializing:
      return {"logits": logits_NxK}
    n = features.shape[0]
    if code_noise is None:
      if train:
        raise ValueError("TBHHead needs code_noise in train mode")
      code_noise = {"threshold": jnp.full((n, self.bits), 0.5),
                    "binary": jnp.zeros((n, self.bits)),
                    "continuous": jnp.zeros((n, self.continuous_dim))}
    binary_NxK = ops.stochastic_binary(logits_NxK, code_noise["threshold"])
    continuous_NxC = nn.sigmoid(
        dense(self.continuous_dim, name="encoder_continuous")(hidden)).astype(jnp.float32)

    # The graph over the global batch: every device builds it whole and keeps its own rows.
    gather = train and not initializing and self.axis_name is not None
    if gather:
      binary_all = lax.all_gather(binary_NxK, self.axis_name, tiled=True)
      continuous_all = lax.all_gather(continuous_NxC, self.axis_name, tiled=True)
    else:
      binary_all, continuous_all = binary_NxK, continuous_NxC
    propagation = ops.normalized_adjacency(
        ops.hamming_adjacency(binary_all, self.adjacency_power))
    if gather:
      propagation = lax.dynamic_slice_in_dim(propagation, lax.axis_index(self.axis_name) * n, n)
    values = dense(self.continuous_dim, name="gcn")(continuous_all).astype(jnp.float32)
    bottleneck_NxC = nn.sigmoid(
        jnp.matmul(propagation, values, precision=lax.Precision.HIGHEST))

    decoded = nn.relu(dense(self.hidden_dim, name="decoder_hidden")(bottleneck_NxC))
    reconstruction = nn.relu(dense(self.feature_dim, name="decoder_out")(decoded))

    critic_binary = dense(1, name="critic_binary")
    critic_continuous = dense(1, name="critic_continuous")
    prob = lambda layer, v: nn.sigmoid(layer(v).astype(jnp.float32))[:, 0]
    return {"logits": logits_NxK, "binary": binary_NxK, "bottleneck": bottleneck_NxC,
            "reconstruction": reconstruction.astype(jnp.float32),
            "critic_binary_fake": prob(critic_binary, binary_NxK),
            "critic_binary_real": prob(critic_binary, code_noise["binary"]),
            "critic_continuous_fake": prob(critic_continuous, bottleneck_NxC),
            "critic_continuous_real": prob(critic_continuous, code_noise["continuous"])}


def tbh_noise(key: jax.Array, step: jax.Array, index_B: jax.Array, bits: int,
              continuous_dim: int, code_noise: str) -> Dict[str, jax.Array]:
  """The head's `code_noise`, per example from `base.example_keys`: the binary neuron's eps
  (U[0, 1), or 1/2 for `code_noise="none"`), the binary critic's Bernoulli(1/2) samples and
  the continuous critic's U[0, 1) samples."""
  keys = base.example_keys(key, step, index_B)
  uniform = lambda salt, size: jax.vmap(
      lambda k: jax.random.uniform(jax.random.fold_in(k, salt), (size,)))(keys)
  threshold = uniform(1, bits) if code_noise == "uniform" else jnp.full(
      (index_B.shape[0], bits), 0.5, jnp.float32)
  return {"threshold": threshold,
          "binary": (uniform(2, bits) >= 0.5).astype(jnp.float32),
          "continuous": uniform(3, continuous_dim)}


def tbh_losses(out: Dict[str, jax.Array], target_NxD: jax.Array,
               axis_name: Optional[str] = DATA_AXIS) -> Dict[str, jax.Array]:
  """{"actor", "critic", "reconstruction", "adversarial_binary", "adversarial_continuous"} of
  the head's train outputs on this device's rows (the module's equations), each over the
  global batch: the sums psum'd, the means pmean'd over `axis_name` (None: one device)."""
  psum = (lambda v: lax.psum(v, axis_name)) if axis_name else (lambda v: v)
  pmean = (lambda v: lax.pmean(v, axis_name)) if axis_name else (lambda v: v)
  rec = psum(0.5 * jnp.sum(jnp.square(out["reconstruction"] - lax.stop_gradient(target_NxD))))

  def adversarial(real, fake):
    return (pmean(jnp.mean(ops.binary_cross_entropy(1.0, real)))
            + pmean(jnp.mean(ops.binary_cross_entropy(0.0, fake))))

  adv_b = adversarial(out["critic_binary_real"], out["critic_binary_fake"])
  adv_c = adversarial(out["critic_continuous_real"], out["critic_continuous_fake"])
  return {"actor": rec - adv_b - adv_c, "critic": adv_b + adv_c, "reconstruction": rec,
          "adversarial_binary": adv_b, "adversarial_continuous": adv_c}


class TBH(base.Method):
  """TBH's twin-bottleneck auto-encoder with its two critics (two parameter groups)."""

  name = "tbh"
  title = "TBH"
  source = "Shen et al., CVPR 2020"

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    if "tbh" not in config:
      raise errors.UserError("config.tbh is missing: config.method='tbh' needs configs/tbh.py")
    own = config.tbh
    for name in ("hidden_dim", "continuous_dim"):
      value = own[name]
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise errors.UserError(f"config.tbh.{name}={value!r} must be an integer >= 1")
    for name in ("adjacency_power", "critic_learning_rate"):
      value = own[name]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          np.isfinite(value) and value > 0):
        raise errors.UserError(f"config.tbh.{name}={value!r} must be a number > 0")
    if own.code_noise not in CODE_NOISES:
      raise errors.UserError(f"config.tbh.code_noise={own.code_noise!r}; expected one of "
                             f"{CODE_NOISES}")
    if config.model.hash_init != "random":
      raise errors.UserError(
          f"config.model.hash_init={config.model.hash_init!r}: TBH's code layer reads its "
          "encoder's hidden layer, so it cannot start as ITQ; expected 'random'")

  @classmethod
  def make_head(cls, config, feature_dim, dtype, dropout_rate):
    return TBHHead(bits=config.bits, feature_dim=feature_dim, hidden_dim=config.tbh.hidden_dim,
                   continuous_dim=config.tbh.continuous_dim,
                   adjacency_power=float(config.tbh.adjacency_power),
                   dropout_rate=dropout_rate, dtype=dtype)

  def losses(self, params, batch, context):
    inputs = batch["image"] if "image" in batch else batch["features"]
    out = context.model.apply({"params": params}, inputs, train=True,
                              code_noise=self.noise(context, batch),
                              rngs={"dropout": base.dropout_key(context.key, context.step)})
    terms = tbh_losses(out, out["features"])
    metrics = {"loss": terms["actor"], **{k: v for k, v in terms.items() if k != "actor"},
               "bits_on": base.global_batch_mean(jnp.mean(out["binary"]))}
    return {base.MAIN_GROUP: terms["actor"], CRITIC_GROUP: terms["critic"]}, metrics

  def noise(self, context: base.Context, batch: Dict[str, jax.Array]) -> Dict[str, jax.Array]:
    """The head's `code_noise` for this device's examples (`tbh_noise`)."""
    own = self.config.tbh
    return tbh_noise(context.key, context.step, batch["index"], self.config.bits,
                     own.continuous_dim, own.code_noise)

  def param_group(self, path):
    if len(path) > 1 and path[0] == "head" and path[1] in CRITIC_LAYERS:
      return CRITIC_GROUP
    return base.MAIN_GROUP

  def loss_groups(self):
    return (base.MAIN_GROUP, CRITIC_GROUP)

  def group_optimizers(self, steps_per_epoch):
    del steps_per_epoch
    return {CRITIC_GROUP: optax.adam(float(self.config.tbh.critic_learning_rate))}

  def results_fields(self):
    return {"code_noise": self.config.tbh.code_noise}
