"""Progress lines (steps/s, images/s, ETA) and TensorBoard scalars, from process 0 only.

`Reporter` follows training; `Progress` (and `iterate`) follows any other long loop over items:
feature extraction, encoding, dataset preparation. Train metrics are averaged over each logging interval with clu's metric Collection (the sums
stay on the device; nothing is read back between logging steps). TensorBoard event files are
written with tensorboardX, which, unlike clu's writers, needs no TensorFlow.
"""

import time
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, TypeVar

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
    # The method's terms ("loss_*" metrics), whichever method logged them.
    terms = " ".join(f"{name[5:]} {value:.4f}" for name, value in scalars.items()
                     if name.startswith("loss_"))
    terms = f"  ({terms})" if terms else ""
    logging.info("step %d/%d  loss %.4f%s  %.2f steps/s  %.1f images/s  ETA %s", step,
                 self._total, scalars["loss"], terms, steps_per_s,
                 steps_per_s * self._examples, _format_seconds(eta_s))
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


class Progress:
  """Logs `what: done/total unit (pct)  rate unit/s  ETA h:mm:ss` every `every_s` seconds.

  Call `update(n)` after each n items and `done()` at the end, which logs the total time and
  the average rate. `clock` returns seconds (default `time.monotonic`).
  """

  def __init__(self, what: str, total: int, *, unit: str = "images", every_s: float = 10.0,
               clock: Optional[Callable[[], float]] = None):
    clock = clock or time.monotonic
    self.what, self.total, self.unit, self.every_s, self._clock = what, total, unit, every_s, clock
    self.count = 0
    self._start = self._last_log = clock()

  def update(self, n: int) -> None:
    self.count += int(n)
    now = self._clock()
    if now - self._last_log >= self.every_s and self.count < self.total:
      self._last_log = now
      _log(progress_line(self.what, self.count, self.total, now - self._start, self.unit))

  def done(self) -> None:
    elapsed = self._clock() - self._start
    _log(f"{self.what}: {self.count} {self.unit} in {_format_seconds(elapsed)} "
         f"({self.count / max(elapsed, 1e-9):.1f} {self.unit}/s)")


T = TypeVar("T")


def iterate(items: Iterable[T], what: str, total: int, **kwargs) -> Iterator[T]:
  """Yields `items`, counting each one in a `Progress(what, total, **kwargs)`."""
  line = Progress(what, total, **kwargs)
  for item in items:
    yield item
    line.update(1)
  line.done()


def progress_line(what: str, count: int, total: int, elapsed_s: float, unit: str) -> str:
  """`what: count/total unit (pct%)  rate unit/s  ETA h:mm:ss` at the mean rate so far."""
  rate = count / max(elapsed_s, 1e-9)
  eta_s = (total - count) / max(rate, 1e-9)
  return (f"{what}: {count}/{total} {unit} ({100 * count / max(total, 1):.0f}%)  "
          f"{rate:.1f} {unit}/s  ETA {_format_seconds(eta_s)}")


def _log(line: str) -> None:
  if jax.process_index() == 0:
    logging.info("%s", line)


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
