"""The run of any method: per epoch refresh the method's state from the training features
(UCSH: re-cluster, re-estimate s_t), then train; evaluate.

`train_and_evaluate` is the main job. It resumes from the latest checkpoint in the workdir, so
a run started again with the same workdir continues exactly where it stopped.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
from clu import parameter_overview
import jax
import ml_collections
import numpy as np

from ucsh_jax import checkpointing
from ucsh_jax import data
from ucsh_jax import errors
from ucsh_jax import evaluate
from ucsh_jax import experiment
from ucsh_jax import inference
from ucsh_jax import methods
from ucsh_jax import parallel
from ucsh_jax import prefix_cache
from ucsh_jax import progress
from ucsh_jax import run_record
from ucsh_jax import train_step as train_step_lib


@dataclasses.dataclass
class Run:
  """Everything built from the config before the first step."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  source: Any
  splits: Any
  method: methods.Method
  model: Any
  preprocessing: Any
  state: Any
  steps_per_epoch: int
  keys: Dict[str, jax.Array]
  data_fingerprint: Optional[str] = None  # The data's `source.fingerprint`.


def checkpoint_dir(workdir: str) -> str:
  """Where a run's checkpoints are saved."""
  return os.path.join(workdir, "checkpoints")


def setup(config: ml_collections.ConfigDict, workdir: str, *, restoring: bool = False,
          prefix_cache: bool = True) -> Run:
  """Builds data, splits, model and the (replicated) initial train state.

  With `restoring`, the state is only a restore target (shapes, dtypes and shardings): nothing
  is copied to the devices, since a checkpoint will replace it. With a frozen prefix
  (`model.trainable_from`) and `prefix_cache`, the run's model and source are the cached ones
  (see `_with_prefix_cache`); `prefix_cache=False` keeps the whole network, for new images.
  """
  mesh = parallel.make_mesh()
  experiment.validate(config, mesh.size)
  os.makedirs(workdir, exist_ok=True)
  source = data.get_source(config.data)
  if restoring:  # A fresh start's data are recorded by its caller.
    run_record.check_data(workdir, source.fingerprint, write=jax.process_index() == 0)
  splits = data.make_splits(config.data, source, seed=config.seed, workdir=workdir,
                            redraw=not restoring)
  if source.kind == "features":
    pretrained, preprocessing = None, None
    sample = np.asarray(source[0]["features"], np.float32)[None]
  else:
    pretrained, preprocessing = experiment.preprocessing_for(config)
    size = config.data.image_size
    sample = np.zeros((1, size, size, 3), np.float32)
  input_dim = int(np.prod(sample.shape[1:]))
  model = experiment.build_model(config, feature_dim=input_dim)
  root = jax.random.key(config.seed)
  keys = dict(zip(("init", "train", "method", "epoch"), jax.random.split(root, 4)))
  feature_dim = (experiment.backbone_feature_dim(config) if experiment.uses_backbone(config)
                 else input_dim)
  if not restoring:  # A restored hash layer was started long ago.
    experiment.check_hash_init(config, feature_dim)
  method = methods.build(config, feature_dim, keys["method"])
  if len(splits.train) < max(config.batch_size, method.min_train_items()):
    raise errors.UserError(f"the training set has {len(splits.train)} images, fewer than "
                           f"config.batch_size={config.batch_size} or the "
                           f"{method.min_train_items()} the method needs")
  steps_per_epoch = len(splits.train) // config.batch_size
  logging.info("data %s: %d examples; %d queries, %d database items, %d training items.",
               config.data.name, len(source), len(splits.query), len(splits.database),
               len(splits.train))
  tx = experiment.make_optimizer(config, steps_per_epoch, method)
  run = Run(config=config, workdir=workdir, mesh=mesh, source=source, splits=splits,
            method=method, model=model, preprocessing=preprocessing, state=None,
            steps_per_epoch=steps_per_epoch, keys=keys,
            data_fingerprint=getattr(source, "fingerprint", None))
  params = None
  if not restoring or (prefix_cache and experiment.frozen_layers(config)):
    # Frozen layers keep their initial values, so the prefix cache is keyed by those.
    params = experiment.init_params(model, config, sample, keys["init"], pretrained)
  if prefix_cache:
    run = _with_prefix_cache(run, params)
  if restoring:
    state = experiment.abstract_train_state(model, sample, tx,
                                            parallel.replicated_sharding(mesh))
  else:
    if config.model.hash_init == "itq":
      features_NxD = inference.outputs_for(
          inference.make_forward(run.model, mesh), parallel.replicate(mesh, params), run.source,
          splits.train, "features", **eval_kwargs(run))
      params = experiment.itq_hash_layer(params, features_NxD, config.bits,
                                         jax.random.fold_in(keys["init"], 1))
    state = parallel.replicate(mesh, experiment.create_train_state(model, params, tx))
  return dataclasses.replace(run, state=state)


def _with_prefix_cache(run: Run, params) -> Run:
  """The run with the frozen VGG16 prefix computed once (`model.trainable_from`).

  Its source is then the cached prefix outputs of every item (`prefix_cache.PrefixSource`) and
  its model the network from trainable_from on (same parameters), so training, the epoch's
  features and the evaluation of the run's own data skip the frozen layers. Without a frozen
  prefix, on a run already cached, or with a method whose loss needs the whole network
  (`Method.needs_whole_network`) the run is returned as it is. New images (search, serve)
  go through the whole network: build the run with `setup(..., prefix_cache=False)`.
  """
  if (not experiment.frozen_layers(run.config) or run.source.kind != "image"
      or run.method.needs_whole_network):
    return run
  source = prefix_cache.load_or_build(run.config, run.workdir, run.source, params,
                                      run.preprocessing, run.mesh)
  model = experiment.build_model(run.config, start_layer=run.config.model.trainable_from)
  return dataclasses.replace(run, source=source, model=model, preprocessing=None)


def eval_kwargs(run: Run) -> Dict[str, Any]:
  """The keyword arguments of `inference.outputs_for` for this run."""
  return dict(mesh=run.mesh, batch_size=run.config.eval.batch_size,
              image_size=run.config.data.image_size, preprocessing=run.preprocessing)


def _evaluate(run: Run, forward, params) -> Dict[str, Any]:
  codes = evaluate.encode_query_and_database(forward, params, run.source, run.splits,
                                             **eval_kwargs(run))
  return evaluate.score(codes, run.config.eval.topk)


def _check_finite(step: int, metrics: Dict[str, Any], last_saved: Optional[int]) -> None:
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    where = (f"the last good checkpoint is step {last_saved}" if last_saved is not None
             else "no checkpoint was saved")
    raise FloatingPointError(f"non-finite loss {loss} at step {step}; {where}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       started: Optional[Callable[[Run], None]] = None) -> Dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint), evaluates, writes results.json.

  `started(run)`, when given, is called once the run is set up (config validated, data loaded,
  splits made, model initialised), before anything is trained: `main` writes the run's record
  there, so that a start refused for its config or its data leaves none.
  """
  start_time = time.time()
  checkpointer = checkpointing.Checkpointer(checkpoint_dir(workdir),
                                            max_to_keep=config.checkpoints_to_keep)
  last_saved = checkpointer.latest_step()
  run = setup(config, workdir, restoring=last_saved is not None)
  if started is not None:
    started(run)
  spe = run.steps_per_epoch
  total_steps = config.num_epochs * spe
  train_iter = data.train_iterator(
      run.source, run.splits.train, global_batch_size=config.batch_size,
      image_size=config.data.image_size, preprocessing=run.preprocessing, seed=config.seed,
      num_workers=config.data.num_workers)
  method = run.method
  epoch_state = method.empty_state(len(run.splits.train))
  state = run.state
  if last_saved is not None:
    state, epoch_state = checkpointer.restore(last_saved, state, train_iter, epoch_state)
    logging.info("Resumed from step %d in %s.", last_saved, workdir)
  if jax.process_index() == 0:
    parameter_overview.log_parameter_overview(state.params, msg="Parameters")
  step = int(state.step)
  train_step = train_step_lib.make_train_step(run.mesh, model=run.model, method=method)
  forward = inference.make_forward(run.model, run.mesh)
  reporter = progress.Reporter(workdir, total_steps=total_steps, first_step=step,
                               examples_per_step=config.batch_size,
                               every_steps=config.log_every_steps)
  key = parallel.replicate(run.mesh, run.keys["train"])
  step_inputs = parallel.replicate(run.mesh, method.step_inputs(epoch_state))
  pending = None
  try:
    while step < total_steps:
      epoch = step // spe
      if int(epoch_state.epoch) != epoch:
        features_NxD = inference.outputs_for(
            forward, state.params, run.source, run.splits.train, "features",
            **eval_kwargs(run)) if method.uses_epoch_features else None
        previous = epoch_state
        epoch_state = parallel.same_on_all_hosts(method.refresh(
            features_NxD, epoch_state, epoch=epoch,
            key=jax.random.fold_in(run.keys["epoch"], epoch)))
        reporter.write_scalars(step, method.epoch_scalars(epoch_state, previous))
        step_inputs = parallel.replicate(run.mesh, method.step_inputs(epoch_state))
      host_batch = next(train_iter)
      host_batch.update(method.batch_extras(epoch_state, host_batch["index"]))
      state, metrics = train_step(state, parallel.global_batch(run.mesh, host_batch),
                                  step_inputs, key)
      step += 1
      if pending is not None:  # Checked one step late so that the host never stalls the device.
        _check_finite(*pending, last_saved)
      pending = (step, metrics)
      reporter.step(step, metrics)
      epoch_end = step % spe == 0 and (step // spe) % config.checkpoint_every_epochs == 0
      if step % config.checkpoint_every_steps == 0 or epoch_end or step == total_steps:
        _check_finite(*pending, last_saved)
        checkpointer.save(step, state, train_iter, epoch_state)
        last_saved = step
      every = config.eval.every_epochs
      if step % spe == 0 and every and (step // spe) % every == 0 and step < total_steps:
        reporter.write_scalars(step, {"map": _evaluate(run, forward, state.params)["map"]})
    if pending is not None:
      _check_finite(*pending, last_saved)
  finally:
    checkpointer.wait_until_finished()
    checkpointer.close()
    reporter.close()
  scores = _evaluate(run, forward, state.params)
  results = dict(scores, dataset=config.data.name, bits=config.bits, method=method.name,
                 **method.results_fields(), num_query=len(run.splits.query),
                 num_database=len(run.splits.database), num_train=len(run.splits.train),
                 epochs=config.num_epochs, steps=step,
                 elapsed_s=round(time.time() - start_time, 2))
  if jax.process_index() == 0:
    evaluate.write_json(os.path.join(workdir, "results.json"), results)
  logging.info("MAP@%s = %.4f (%d queries, %d database items)", results["topk"] or "all",
               results["map"], results["num_query"], results["num_database"])
  return results


def restore_params(run: Run) -> Any:
  """The parameters of the workdir's latest checkpoint (an error if there is none)."""
  checkpointer = checkpointing.Checkpointer(checkpoint_dir(run.workdir))
  step = checkpointer.latest_step()
  if step is None:
    raise errors.UserError(f"no checkpoint in {run.workdir}/checkpoints: train first "
                           f"(--mode=train) with this workdir")
  state = checkpointer.restore_state(step, run.state)
  checkpointer.close()
  return state.params


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        write_codes: bool = False) -> Dict[str, Any]:
  """--mode=eval: scores the latest checkpoint; --mode=encode also writes codes.npz."""
  run = setup(config, workdir, restoring=True)
  params = restore_params(run)
  forward = inference.make_forward(run.model, run.mesh)
  codes = evaluate.encode_query_and_database(forward, params, run.source, run.splits,
                                             **eval_kwargs(run))
  scores = evaluate.score(codes, config.eval.topk)
  if jax.process_index() == 0:
    if write_codes:
      evaluate.write_codes(os.path.join(workdir, "codes.npz"), codes)
    evaluate.write_json(os.path.join(workdir, "eval_results.json"),
                        dict(scores, dataset=config.data.name, bits=config.bits))
  logging.info("MAP@%s = %.4f", scores["topk"] or "all", scores["map"])
  return scores
