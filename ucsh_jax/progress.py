"""Progress lines (steps/s, images/s, ETA) and TensorBoard scalars, from process 0 only.

Train metrics are averaged over each logging interval with clu's metric Collection (the sums
stay on the device; nothing is read back between logging steps). TensorBoard event files are
written with tensorboardX, which, unlike clu's writers, needs no TensorFlow.
"""

import time
from typing import Dict, Mapping, Optional

from absl import logging
from clu import metrics as clu_metrics
import jax
import numpy as np
import tensorboardX


def _averages(names) -> type:
  """A clu Collection averaging each named scalar over the steps merged into it."""
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in sorted(names)})


class Reporter:
  """Logs a progress line and writes scalars every `every_steps` steps."""

  def __init__(self, workdir: str, *, total_steps: int, first_step: int,
               examples_per_step: int, every_steps: int):
    self._writer: Optional[tensorboardX.SummaryWriter] = (
        tensorboardX.SummaryWriter(workdir) if jax.process_index() == 0 else None)
    self._total = total_steps
    self._examples = examples_per_step
    self._every = max(1, every_steps)
    self._last_step = first_step
    self._last_time = time.time()
    self._start = self._merge = None
    self._interval = None

  def step(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Call after every step; reads the averages back (a device sync) only on logging steps."""
    if self._merge is None:  # One jitted call per step (a dozen small ops otherwise).
      collection = _averages(metrics)
      self._start = jax.jit(lambda m: collection.single_from_model_output(**m))
      self._merge = jax.jit(lambda acc, m: acc.merge(collection.single_from_model_output(**m)))
    self._interval = (self._start(metrics) if self._interval is None
                      else self._merge(self._interval, metrics))
    if step % self._every and step != self._total:
      return
    now = time.time()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    scalars = {k: float(np.asarray(v)) for k, v in self._interval.compute().items()}
    self._interval = None
    eta_s = (self._total - step) / max(steps_per_s, 1e-9)
    logging.info("step %d/%d  loss %.4f  (l2 %.4f vae %.4f clu %.4f sep %.4f)  "
                 "%.2f steps/s  %.1f images/s  ETA %s", step, self._total, scalars["loss"],
                 scalars["loss_l2"], scalars["loss_vae"], scalars["loss_clustering"],
                 scalars["loss_separating"], steps_per_s, steps_per_s * self._examples,
                 _format_seconds(eta_s))
    scalars.update(steps_per_s=steps_per_s, images_per_s=steps_per_s * self._examples)
    self.write_scalars(step, scalars)

  def write_scalars(self, step: int, scalars: Dict[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
