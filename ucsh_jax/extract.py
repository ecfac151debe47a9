"""`--mode=features`: the eval-mode features of every item of the data set, as a feature file.

The parameters are the workdir's latest checkpoint when it has one, else the configured start
(pretrained VGG16 weights, or a random initialisation from `config.seed`); the file's
`provenance` says which. Extract once on an accelerator, then train hash heads and baselines on
the file (`configs/features.py`) anywhere.
"""

import os

import jax
import ml_collections
import numpy as np

from ucsh_jax import checkpointing
from ucsh_jax import experiment
from ucsh_jax import feature_file
from ucsh_jax import inference
from ucsh_jax import train

FEATURES_FILE = "features.npz"


def describe_initial_features(config: ml_collections.ConfigDict) -> str:
  """What the features of a run's starting parameters are."""
  if config.data.name == "features":
    return f"the vectors of {config.data.path}"
  if not experiment.uses_backbone(config):
    return f"the flattened {config.data.image_size}x{config.data.image_size} RGB pixels in [0, 1]"
  backbone = f"VGG16 (width {config.model.width:g})"
  if config.model.pretrained:
    return f"fc7 of {backbone} with weights {config.model.pretrained}"
  return f"fc7 of {backbone} randomly initialised with seed {config.seed}"


def extract_features(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes WORKDIR/features.npz (every item of the data set, with the run's splits).

  Returns the path written.
  """
  checkpointer = checkpointing.Checkpointer(train.checkpoint_dir(workdir))
  step = checkpointer.latest_step()
  checkpointer.close()
  run = train.setup(config, workdir, restoring=step is not None)
  if step is None:
    params, provenance = run.state.params, describe_initial_features(config)
  else:
    params = train.restore_params(run)
    provenance = f"the model's features at checkpoint step {step} of {workdir}"
  forward = inference.make_forward(run.model, run.mesh)
  ids = np.arange(len(run.source))
  features = inference.outputs_for(forward, params, run.source, ids, "features",
                                   **train.eval_kwargs(run))
  path = os.path.join(workdir, FEATURES_FILE)
  if jax.process_index() == 0:
    feature_file.write(path, features, np.asarray(run.source.labels), ids, run.splits,
                       provenance)
  return path
