"""Orbax checkpoints of everything a run needs to continue exactly where it stopped.

A checkpoint at step t holds three items:
  state: the TrainState (parameters, optimiser state, step), saved from the replicated arrays;
  data:  the grain iterator position (one file per host);
  epoch: the per-epoch state (epoch, k-means centroids, cluster of every training image,
         similarity threshold) the steps of the current epoch use.
Saves are asynchronous; a save interrupted by a crash leaves a temporary folder that Orbax
ignores, so the latest *finished* checkpoint is the one restored.
"""

import os
from typing import Any, Optional, Tuple

import grain
import numpy as np
import orbax.checkpoint as ocp


def latest_saved_step(directory: str) -> Optional[int]:
  """The step of the latest finished checkpoint under `directory`, or None; creates nothing.
  A finished checkpoint is a folder named by its step (a save in progress has a temporary
  name until it completes)."""
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()] if os.path.isdir(
      directory) else []
  return max(steps, default=None)


class Checkpointer:
  """Saves and restores (train state, data iterator, epoch state) under `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler(),
                       "epoch": ocp.StandardCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any, epoch_state: Any) -> None:
    """Starts an asynchronous save; returns once the arrays are copied off the devices."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        epoch=ocp.args.StandardSave(_as_numpy(epoch_state))))

  def restore(self, step: int, state_target: Any, data_iterator: Any,
              epoch_target: Any) -> Tuple[Any, Any]:
    """Restores in place into `data_iterator`; returns (state, epoch_state) shaped like targets."""
    # The epoch item is read whole: a checkpoint may hold fields the method's state no longer
    # has (SSDH's from before it kept its own state); the target's fields are picked from it.
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_target),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        epoch=ocp.args.StandardRestore()))
    saved = {k: np.asarray(v) for k, v in restored["epoch"].items()}
    epoch_state = type(epoch_target)(**{k: saved.get(k, np.asarray(v)) for k, v in
                                        epoch_target._asdict().items()})
    return restored["state"], epoch_state

  def restore_state(self, step: int, state_target: Any) -> Any:
    """Restores only the train state (for evaluation and encoding)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state_target)))["state"]

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _as_numpy(named_tuple: Any) -> dict:
  """The fields as NumPy arrays; empty ones are left out (Orbax refuses zero-size arrays) and
  come back from the restore target."""
  arrays = {k: np.asarray(v) for k, v in named_tuple._asdict().items()}
  return {k: v for k, v in arrays.items() if v.size}
