"""checkpointing.latest_saved_step: what a train start and the search tools take as saved."""

import os

from ucsh_jax import checkpointing


def test_latest_saved_step_counts_finished_checkpoints_only(tmp_path):
  folder = tmp_path / "checkpoints"
  assert checkpointing.latest_saved_step(str(folder)) is None  # Not made.
  assert not folder.exists()
  os.makedirs(folder)
  assert checkpointing.latest_saved_step(str(folder)) is None
  for name in ("3", "12", "20.orbax-checkpoint-tmp-1796588737", "notes"):
    os.makedirs(folder / name)
  assert checkpointing.latest_saved_step(str(folder)) == 12
