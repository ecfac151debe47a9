"""Images/s and FLOP utilisation of the full VGG16 UCSH train step (configs/cifar.py).

The real model (`experiment.build_model`, width 1.0: 138M parameters) and the real compiled
step (`train_step.make_train_step` on `parallel.make_mesh()`, Adam, all four losses) run on a
device-resident random batch.
FLOPs per step come from XLA's cost analysis of the compiled step (forward + backward +
optimiser, per device). Two references run in the same process: a large matmul in the row's
dtype timed just before and just after the row ("vs matmul": the step's FLOP/s over the
matmul's mean, so that load from other processes largely cancels), and the nominal peak of
the device (`--peak_tflops`, else PEAK_TFLOPS by device kind; on a CPU, the measured matmul).
Last, the grain input pipeline of benchmarks/input_speed.py (its flags: --workers, --seconds,
--image_size, --batch_size, --num_images) is timed and compared with the train step.

  python -m benchmarks.train_speed                          (CPU: float32, batches 24 and 32)
  python -m benchmarks.train_speed --dtypes=bfloat16,float32  (GPU/TPU: batches 24 and 96)
"""

import os
import tempfile
import time
from typing import Dict, Optional, Tuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks import input_speed
from configs import cifar
from ucsh_jax import data
from ucsh_jax import experiment
from ucsh_jax import methods
from ucsh_jax import ops
from ucsh_jax import parallel
from ucsh_jax import train_step as train_step_lib
from ucsh_jax.data import cifar10

_SIZES = flags.DEFINE_list("sizes", ["224", "32"], "Image sides to time.")
_BATCHES = flags.DEFINE_list("batches", None, "Global batch sizes; default 24,32 on CPU, "
                             "24,96 on accelerators.")
_DTYPES = flags.DEFINE_list("dtypes", None, "Computation dtypes (float32, bfloat16); default "
                            "float32 on CPU, bfloat16,float32 on accelerators.")
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps per row after compilation; "
                              "default 0 on CPU (a step takes minutes at 224), 1 elsewhere.",
                              lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", 1, "Timed steps per row, at least.", lower_bound=1)
_MIN_TIME = flags.DEFINE_float("min_time", 10.0, "More timed steps until this many seconds.")
_MAX_GIB = flags.DEFINE_float("max_gib", 12.0, "On CPU, skip rows whose compiled step needs "
                              "more memory than this (hosts are shared).")
_PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s of one device for the "
                                  "'% peak' column; 0 = by device kind (see PEAK_TFLOPS).")
_INPUT = flags.DEFINE_bool("input_pipeline", True, "Also time the grain input pipeline.")

# Dense peak TFLOP/s of one JAX device, (bfloat16, float32 at JAX's default matmul precision:
# TF32 tensor cores on NVIDIA, one bfloat16 pass on TPU), from the vendors' data sheets.
# Matched as substrings of `jax.devices()[0].device_kind`, first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.0, 495.0),
    ("H200", 989.0, 495.0),
    ("A100", 312.0, 156.0),
    ("TPU v4", 275.0, 275.0),
    ("TPU v5 lite", 197.0, 197.0),
    ("TPU v5e", 197.0, 197.0),
)


def nominal_peak(device_kind: str, dtype: str) -> Optional[float]:
  """Peak TFLOP/s of one device in `dtype` from --peak_tflops or PEAK_TFLOPS, else None."""
  if _PEAK_TFLOPS.value > 0:
    return _PEAK_TFLOPS.value
  for kind, bf16, fp32 in PEAK_TFLOPS:
    if kind in device_kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


def matmul_tflops(dtype: str, n: int, repeats: int = 10) -> float:
  """TFLOP/s of an (n, n) @ (n, n) matmul on the default device, median of `repeats`.

  The median, like the train step's mean over steps, feels the load of other processes.
  """
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  matmul(x, x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x, x).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * n**3 / float(np.median(times)) / 1e12


def random_params(model, seed: int = 0):
  """He-scaled normal kernels and zero biases in the shapes of `model.init` (no init compile).

  Parameter shapes do not depend on the image size (VGG16's adaptive pool), so one set of
  parameters serves every row.
  """
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
                         train=False)["params"])
  rng = np.random.default_rng(seed)

  def draw(leaf):
    if len(leaf.shape) == 1:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

  return jax.tree.map(draw, shapes)


def make_batch(config, batch_size: int, size: int, seed: int = 0) -> Dict[str, np.ndarray]:
  """A normalised-image-like batch: "image" (B, size, size, 3), "index" (B,), "center" (B, k)."""
  rng = np.random.default_rng(seed)
  centers = np.asarray(ops.hash_centers(config.num_clusters, config.bits))
  return {"image": rng.standard_normal((batch_size, size, size, 3), np.float32),
          "index": np.arange(batch_size, dtype=np.int32),
          "center": centers[rng.integers(0, config.num_clusters, batch_size)]}


def time_row(config, mesh, state, batch_size: int, size: int, dtype: str, warmup: int,
             max_gib: Optional[float]):
  """Compiles and times one (batch, size, dtype) train step.

  Returns:
    (state after the steps, dict with compile_s, memory_gib (per device: arguments, outputs
    and temporaries; nan if unknown), and unless the row needs more than `max_gib`: steps,
    step_s (mean), flops (XLA's count per device and step)).
  """
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  model = experiment.build_model(config)
  method = methods.build(config, experiment.backbone_feature_dim(config), jax.random.key(0))
  step_fn = train_step_lib.make_train_step(mesh, model=model, method=method)
  batch = parallel.global_batch(mesh, make_batch(config, batch_size, size))
  threshold = parallel.replicate(mesh, np.float32(0.3))
  key = parallel.replicate(mesh, jax.random.key(0))
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, threshold, key).compile()
  row = {"compile_s": time.perf_counter() - start, "memory_gib": np.nan}
  memory = compiled.memory_analysis()
  if memory is not None:
    row["memory_gib"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                         + memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2**30
  if max_gib is not None and row["memory_gib"] > max_gib:
    return state, row
  cost = compiled.cost_analysis()
  row["flops"] = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

  def run(num_steps, state):
    for _ in range(num_steps):
      state, metrics = compiled(state, batch, threshold, key)
    return state, float(metrics["loss"])  # Waits for the last step.

  if warmup:
    state, _ = run(warmup, state)
  start = time.perf_counter()
  state, loss = run(_STEPS.value, state)
  steps, elapsed = _STEPS.value, time.perf_counter() - start
  if elapsed < _MIN_TIME.value:  # Short steps: one more uninterrupted run of the missing time.
    more = int(np.ceil((_MIN_TIME.value - elapsed) / (elapsed / steps)))
    state, loss = run(more, state)
    steps, elapsed = steps + more, time.perf_counter() - start
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite loss at batch {batch_size}, size {size}, {dtype}")
  row.update(steps=steps, step_s=elapsed / steps)
  return state, row


def input_pipeline_rates() -> Dict[int, float]:
  """Images/s of the grain pipeline per worker count (benchmarks/input_speed.py's measurement)."""
  with tempfile.TemporaryDirectory() as tmp:
    manual = os.path.join(tmp, "manual")
    os.makedirs(manual)
    input_speed.write_archive(os.path.join(manual, cifar10.ARCHIVE),
                              input_speed._NUM_IMAGES.value)  # pylint: disable=protected-access
    source = data.get_source(ml_collections.ConfigDict(dict(
        name="cifar10", manual_dir=manual, data_dir=os.path.join(tmp, "tfds"),
        skip_corrupt=False)))
    return {w: input_speed.images_per_second(source, w)
            for w in map(int, input_speed._WORKERS.value)}  # pylint: disable=protected-access


def print_input_ratios(train_rates: Dict[Tuple[int, int, str], float]) -> None:
  """Times the input pipeline and prints its rate over each train step row of its image size."""
  image_size = input_speed._IMAGE_SIZE.value  # pylint: disable=protected-access
  host_batch = input_speed._BATCH_SIZE.value  # pylint: disable=protected-access
  rates = input_pipeline_rates()
  best = max(rates.values())
  print(f"\ngrain input pipeline (benchmarks/input_speed.py: decode, resize to {image_size}, "
        f"normalise, host batch {host_batch}): "
        + ", ".join(f"{w} workers {r:.0f} images/s" for w, r in rates.items()))
  print(f"{'train step':>28} {'images/s':>9} {'input / train':>14} {'target >= 5x':>13}")
  for (size, batch_size, dtype), images_s in train_rates.items():
    if size == image_size:
      ratio = best / images_s
      print(f"{f'{size}px batch {batch_size} {dtype}':>28} {images_s:>9.2f} {ratio:>13.1f}x "
            f"{'met' if ratio >= 5 else 'NOT met':>13}")


def main(argv):
  del argv
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  batches = [int(b) for b in (_BATCHES.value or (["24", "32"] if on_cpu else ["24", "96"]))]
  dtypes = _DTYPES.value or (["float32"] if on_cpu else ["bfloat16", "float32"])
  sizes = [int(s) for s in _SIZES.value]
  warmup = (0 if on_cpu else 1) if _WARMUP.value is None else _WARMUP.value
  mesh = parallel.make_mesh()
  for b in batches:
    if b % mesh.size:
      raise ValueError(f"--batches entry {b} is not a multiple of the {mesh.size} devices")

  config = cifar.get_config()
  model = experiment.build_model(config)
  params = random_params(model)
  num_params = sum(p.size for p in jax.tree.leaves(params))
  tx = experiment.make_optimizer(config, steps_per_epoch=100)
  state = parallel.replicate(mesh, experiment.create_train_state(model, params, tx))
  del params

  matmul_n = 2048 if on_cpu else 8192
  print(f"\nUCSH train step (configs/cifar.py: VGG16 width {config.model.width}, "
        f"{num_params / 1e6:.1f}M params, {config.bits} bits, {config.optimizer.name}) on "
        f"{mesh.size} x {device.device_kind} ({device.platform}), jax {jax.__version__}")
  print(f"GFLOP/step, TFLOP/s and GiB are per device; 'vs matmul' = step FLOP/s / FLOP/s of a "
        f"{matmul_n}^2 matmul (mean of before and after the row); '% peak' against "
        + (f"--peak_tflops={_PEAK_TFLOPS.value}" if _PEAK_TFLOPS.value else
           "the matmul (CPU)" if on_cpu else "the data-sheet peak of the device kind"))
  header = (f"{'size':>5} {'batch':>5} {'dtype':>8} {'compile s':>9} {'steps':>5} "
            f"{'s/step':>7} {'images/s':>9} {'GFLOP/step':>10} {'TFLOP/s':>8} "
            f"{'matmul TF/s':>11} {'vs matmul':>9} {'% peak':>6} {'GiB':>5}")
  print(header)
  train_rates: Dict[Tuple[int, int, str], float] = {}
  for size in sizes:
    for batch_size in batches:
      for dtype in dtypes:
        before = matmul_tflops(dtype, matmul_n)
        state, row = time_row(config, mesh, state, batch_size, size, dtype, warmup,
                              _MAX_GIB.value if on_cpu else None)
        reference = 0.5 * (before + matmul_tflops(dtype, matmul_n))
        if "step_s" not in row:
          print(f"{size:>5} {batch_size:>5} {dtype:>8} {row['compile_s']:>9.1f}  skipped: needs "
                f"{row['memory_gib']:.1f} GiB > --max_gib={_MAX_GIB.value}", flush=True)
          continue
        images_s = batch_size / row["step_s"]
        tflops = row["flops"] / row["step_s"] / 1e12
        peak = reference if on_cpu and not _PEAK_TFLOPS.value else nominal_peak(
            device.device_kind, dtype)
        peak_text = f"{100 * tflops / peak:>6.1f}" if peak else f"{'-':>6}"
        train_rates[size, batch_size, dtype] = images_s
        print(f"{size:>5} {batch_size:>5} {dtype:>8} {row['compile_s']:>9.1f} "
              f"{row['steps']:>5} {row['step_s']:>7.3f} {images_s:>9.2f} "
              f"{row['flops'] / 1e9:>10.1f} {tflops:>8.3f} {reference:>11.3f} "
              f"{tflops / reference:>9.2f} {peak_text} {row['memory_gib']:>5.1f}", flush=True)
  del state

  if _INPUT.value:
    print_input_ratios(train_rates)


if __name__ == "__main__":
  app.run(main)
