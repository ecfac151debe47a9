"""What a hashing method is to the shared pipeline.

The pipeline (data, the VGG16 or the feature top, the data-parallel step, the epoch loop,
checkpoints, evaluation, search, report) is the same for every method. A method adds:

  * a head on the features x (`make_head`): a Flax module `head(x, train=..., code_noise=...)`
    returning at least "logits" (n, k), whose sign is the code at evaluation, and whatever
    else its loss reads (decoders, discriminators);
  * its per-epoch state (`empty_state`, `refresh`): a NamedTuple of NumPy arrays with an
    `epoch` field (-1 before the first refresh), checkpointed with the run, computed at the
    start of every epoch from the eval-mode features of the training set;
  * what each step needs from that state: per-example arrays added to the batch
    (`batch_extras`, looked up by training-set index) and replicated arrays (`step_inputs`);
  * its losses over the model's outputs (`losses`), written for one device of the "data"
    mesh (`lax.all_gather` over `parallel.DATA_AXIS` for the pairwise terms), each loss
    identical on every device;
  * optionally more than one parameter group with its own optimiser (`param_group`,
    `group_optimizers`): each group's parameters are updated from the gradient of that
    group's loss only, in the same step (an adversarial critic, for instance).

A method's own config fields live in its own group (`config.<name>`), which only its configs
have.
"""

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax import lax
import ml_collections
import numpy as np
import optax

from ucsh_jax.parallel import DATA_AXIS

MAIN_GROUP = "main"


class Context(NamedTuple):
  """What `Method.losses` gets besides the parameters and the batch.

  model: the whole network (inputs -> features x -> the method's head), applied as
    `model.apply({"params": params}, inputs, train=True, rngs=..., code_noise=...)`; its
    outputs are "features" (n, d), "similarity_features" (n, d) (without dropout) and the
    head's.
  key: the run's training key (fold in `step` and example indices for randomness that does
    not depend on the device layout: `methods.example_keys`).
  step: the optimiser step (scalar int32).
  inputs: the replicated `step_inputs` of this epoch.
  """
  model: nn.Module
  key: jax.Array
  step: jax.Array
  inputs: Any


class NoState(NamedTuple):
  """The per-epoch state of a method that keeps none."""
  epoch: np.ndarray


class Method:
  """A method configured for one run; the defaults: no per-epoch state, one parameter group.

  Built by `methods.build(config, feature_dim, key)` once the width d of the features x is
  known; `key` is the run's key for the method's fixed random choices (e.g. hash centers).
  """

  name: str = ""
  # Its row name in tables and reports, and where the method comes from.
  title: str = ""
  source: str = ""
  # Needs the images themselves (not a feature file), e.g. to transform them.
  needs_images: bool = False
  # Its loss applies the model to the raw images (so a cached frozen prefix cannot serve it).
  needs_whole_network: bool = False
  # Reads the training set's eval-mode features at the start of every epoch (`refresh`).
  uses_epoch_features: bool = False

  def __init__(self, config: ml_collections.ConfigDict, feature_dim: int, key: jax.Array):
    self.config = config
    self.feature_dim = feature_dim
    self.key = key

  @classmethod
  def validate(cls, config: ml_collections.ConfigDict) -> None:
    """Raises errors.UserError naming the method's config field that makes the run impossible."""

  @classmethod
  def make_head(cls, config: ml_collections.ConfigDict, feature_dim: int, dtype: Any,
                dropout_rate: float) -> nn.Module:
    """The module on the features x (n, d) -> {"logits" (n, k), ...}, called with the keywords
    `train` and `code_noise` like `models.HashHead`; `dropout_rate`: the dropout the run puts
    before the hash layer."""
    raise NotImplementedError

  def empty_state(self, num_train: int) -> NamedTuple:
    """The state before the first epoch (epoch -1), with the shapes a checkpoint holds."""
    del num_train
    return NoState(epoch=np.asarray(-1, np.int32))

  def refresh(self, features_NxD: Optional[np.ndarray], previous: NamedTuple, *, epoch: int,
              key: jax.Array) -> NamedTuple:
    """The state of `epoch` from the training features (None unless `uses_epoch_features`)."""
    del features_NxD, key
    return previous._replace(epoch=np.asarray(epoch, np.int32))

  def epoch_scalars(self, state: NamedTuple, previous: NamedTuple) -> Dict[str, float]:
    """TensorBoard scalars written when an epoch's state is computed."""
    del state, previous
    return {}

  def batch_extras(self, state: NamedTuple, index_B: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-example arrays the step needs, for the training-set positions `index_B`."""
    del state, index_B
    return {}

  def step_inputs(self, state: NamedTuple) -> Any:
    """Arrays every device gets whole in each step of the epoch (e.g. thresholds)."""
    del state
    return np.zeros((), np.float32)

  def losses(self, params, batch: Dict[str, jax.Array], context: Context
             ) -> Tuple[Dict[str, jax.Array], Dict[str, jax.Array]]:
    """({group: loss}, metrics) on one device's slice of the batch.

    The batch holds "index" (B,) int32 (training-set positions), "image" (B, H, W, 3) or
    "features" (B, d), and the `batch_extras`. Every value must be the same on every device
    (pmean or all_gather before reducing), so that 1 device equals 8. Metrics are scalars;
    "loss" is the main group's loss.
    """
    raise NotImplementedError

  def param_group(self, path: Tuple[str, ...]) -> str:
    """The group of the parameter at `path`, its keys from the top ("head", "critic",
    "kernel"); default: all in MAIN_GROUP."""
    del path
    return MAIN_GROUP

  def loss_groups(self) -> Sequence[str]:
    """The groups `losses` returns, MAIN_GROUP first."""
    return (MAIN_GROUP,)

  def group_optimizers(self, steps_per_epoch: int) -> Dict[str, optax.GradientTransformation]:
    """The optimisers of the groups other than MAIN_GROUP (whose optimiser is the config's)."""
    del steps_per_epoch
    return {}

  def min_train_items(self) -> int:
    """The fewest training items the method can work with (besides one batch)."""
    return 1

  def results_fields(self) -> Dict[str, Any]:
    """What results.json records about the method besides its name (e.g. UCSH's ablation)."""
    return {}


def example_keys(key: jax.Array, step: jax.Array, index_B: jax.Array) -> jax.Array:
  """Per-example random keys from (step, example index): independent of the device layout."""
  step_key = jax.random.fold_in(key, step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index_B)


def code_noise(key: jax.Array, step: jax.Array, index_B: jax.Array, bits: int) -> jax.Array:
  """(B, bits) uniform [0, 1) noise of a decoder's Bernoulli sample (HashHead's
  `code_noise`), drawn per example from `example_keys`."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (bits,)))(
      example_keys(key, step, index_B))


def dropout_key(key: jax.Array, step: jax.Array) -> jax.Array:
  """This device's dropout key of the step (dropout masks are drawn per device)."""
  return jax.random.fold_in(jax.random.fold_in(key, step),
                            lax.axis_index(DATA_AXIS) + (1 << 20))


def global_batch_mean(x: jax.Array) -> jax.Array:
  """The mean over the global batch of a per-device mean (the slices are equal-sized)."""
  return lax.pmean(x, DATA_AXIS)


def same_on_all_devices(tree: Any) -> Any:
  """`tree` (values already equal on every device) typed as replicated over the mesh, as
  `losses`' outputs must be: the pmean of equal values is the value."""
  return jax.tree.map(lambda x: lax.pmean(x, DATA_AXIS), tree)
