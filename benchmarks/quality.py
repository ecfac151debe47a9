"""Retrieval quality: UCSH, its ablations, the other methods and the shallow baselines on the
same inputs.

  nice python -m benchmarks.quality --data=/work/shared/data/cifar-mini-deepfeat.npz \
      --topk=1000 --out=runs/quality_dev
  nice python -m benchmarks.quality --config=configs/digits.py --out=runs/quality_digits

With --data (a feature file) the UCSH rows use `configs/features.py`; with --config (e.g. the
digits demo) that config is UCSH's and the others are derived from it the same way. Each other
method (`ucsh_jax.methods.NAMES`) runs its own config, `configs/<method>.py:<--variant>`
(default "features" with --data), with its schedule, on the data, seed, code length, weights
and cut-off of UCSH's. Rows, each at every code length and seed:
  UCSH                the config as shipped;
  UCSH, paper         the paper's objective on the same network (trainable top on): cosine S,
                      clustering beta = 10, random hash-layer start;
  UCSH-V/-C/-S/-R     the ablations of that objective (Table 2);
  ssdh, ...           the other methods, by their config.method name;
  LSH, ITQ, SH, SpH   fit on the training split of the same inputs;
  cosine              the real-valued cosine ranking of the inputs (no hashing), the ceiling.
Printed and written as mean +- std over the seeds to OUT/quality.json and OUT/quality.md.
Every run trains through `train.train_and_evaluate` in a temporary workdir, --jobs of them at a
time in worker processes; compiled programs are shared through a compilation cache on disk, so
each (row, code length) compiles about once. Measured on the dev set (63 training runs, 2
jobs): 9.4 min wall on a quiet 2-core machine (20.7 min on a shared one at load 6-8).
"""

from concurrent import futures
import copy
import importlib
import multiprocessing
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from configs import features as features_config
from ucsh_jax import baselines
from ucsh_jax import cli
from ucsh_jax import evaluate
from ucsh_jax import experiment
from ucsh_jax import inference
from ucsh_jax import methods
from ucsh_jax import tables
from ucsh_jax import train
from ucsh_jax.report import events

_DATA = flags.DEFINE_string("data", "", "Feature file (.npz); or give --config.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file for UCSH (e.g. configs/digits.py); --config.FIELD=VALUE "
    "overrides a field.")
_TOPK = flags.DEFINE_integer("topk", 0, "MAP@topk; 0: the config's eval.topk, -1: all.")
_BITS = flags.DEFINE_list("bits", ["16", "32", "64"], "Code lengths.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (splits unless the file has them, "
                           "initialisation, shuffling, baselines' keys).")
_ROWS = flags.DEFINE_list("rows", ["ucsh", "paper", "V", "C", "S", "R", "ssdh", "lsh", "itq",
                                   "sh", "sph", "cosine"], "Rows to measure (also 'fixed').")
_VARIANT = flags.DEFINE_string("variant", "", "The variant of the other methods' configs "
                               "(configs/<method>.py:VARIANT): '' = 'features' with --data, "
                               "else the images' paper settings; e.g. 'finetune', 'digits'.")
_OUT = flags.DEFINE_string("out", "runs/quality", "Output directory.")
_JOBS = flags.DEFINE_integer("jobs", 2, "Training runs in parallel (worker processes).")

SHALLOW = ("lsh", "itq", "sh", "sph")
ROW_NAMES = {"ucsh": "UCSH (config as shipped)", "paper": "UCSH, paper's objective",
             "fixed": "UCSH on the fixed inputs (configs/features.py)",
             "V": "UCSH-V (paper's, alpha = 0)", "C": "UCSH-C (paper's, beta = 0)",
             "S": "UCSH-S (paper's, gamma = 0)", "R": "UCSH-R (paper's, tanh relaxation)",
             "cosine": "cosine ranking of the inputs (real-valued)",
             **{name: cls.title for name, cls in methods.METHODS.items() if name != "ucsh"},
             **tables.METHOD_NAMES}


def paper_objective(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's method on the same network and schedule: cosine S, clustering, random start."""
  config = copy.deepcopy(config)
  paper = features_config.cifar.get_config()
  config.similarity.target = paper.similarity.target
  config.loss.alpha, config.loss.beta = paper.loss.alpha, paper.loss.beta
  config.loss.gamma, config.loss.balance = paper.loss.gamma, paper.loss.balance
  config.model.hash_init = paper.model.hash_init
  return config


def method_config(name: str, base: ml_collections.ConfigDict,
                  variant: str) -> ml_collections.ConfigDict:
  """`configs/<name>.py:<variant>` on the data, seed, code length, weights and cut-off of
  `base` (UCSH's config)."""
  config = importlib.import_module(f"configs.{name}").get_config(variant or None)
  config.data = copy.deepcopy(base.data)
  config.seed, config.bits, config.eval.topk = base.seed, base.bits, base.eval.topk
  config.model.pretrained = base.model.pretrained
  config.model.prefix_cache_dir = base.model.prefix_cache_dir
  return config


def row_configs(base: ml_collections.ConfigDict,
                variant: str) -> Dict[str, ml_collections.ConfigDict]:
  paper = paper_objective(base)
  rows = {"ucsh": base, "paper": paper}
  rows.update({name: method_config(name, base, variant)
               for name in methods.NAMES if name != "ucsh"})
  for ablation in ("V", "C", "S", "R"):
    rows[ablation] = copy.deepcopy(paper)
    rows[ablation].ablation = ablation
  return rows


def _use_compilation_cache() -> None:
  """One compilation per program across all the runs (and worker processes) of a benchmark."""
  jax.config.update("jax_compilation_cache_dir",
                    os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                   os.path.join(tempfile.gettempdir(), "ucsh-quality-cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def train_map(config: ml_collections.ConfigDict) -> Tuple[float, float, Dict[str, Any]]:
  """(MAP, seconds, what a fine-tuned backbone did) of one training run in a temporary
  workdir; the last is empty unless VGG16 layers trained (see `fine_tuning_facts`)."""
  logging.set_verbosity(logging.WARNING)
  _use_compilation_cache()
  start = time.time()
  with tempfile.TemporaryDirectory() as workdir:
    value = train.train_and_evaluate(config, workdir)["map"]
    seconds = time.time() - start
    facts = fine_tuning_facts(config, workdir) if experiment.uses_backbone(config) else {}
    return value, seconds, facts


def fine_tuning_facts(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """How far the trained VGG16 layers moved and what their features are worth.

  "weight_change": {layer: ||W - W_0|| / ||W_0||} of each trained VGG16 kernel against the
  start; "cosine_map": MAP of the cosine ranking of the trained network's features (the top's
  output); "neighbours_replaced": per epoch after the first, the mean fraction of each
  training image's neighbour list that changed.
  """
  run = train.setup(config, workdir, restoring=True)
  start = experiment.init_params(
      experiment.build_model(config), config,
      np.zeros((1, config.data.image_size, config.data.image_size, 3), np.float32),
      run.keys["init"], experiment.preprocessing_for(config)[0])["backbone"]
  trained = jax.device_get(train.restore_params(run))
  frozen = experiment.frozen_layers(config)
  change = {layer: float(np.linalg.norm(trained["backbone"][layer]["kernel"] - w["kernel"])
                         / np.linalg.norm(w["kernel"]))
            for layer, w in start.items() if layer not in frozen}
  forward = inference.make_forward(run.model, run.mesh)
  feats = {}
  for split in ("query", "database"):
    indices = getattr(run.splits, split)
    feats[split] = inference.outputs_for(forward, trained, run.source, indices, "features",
                                         **train.eval_kwargs(run))
    feats[split + "_labels"] = np.asarray(run.source.labels)[indices]
  scalars = events.read_scalars(workdir)
  replaced = scalars.get("neighbours_replaced")
  return {"weight_change": change, "cosine_map": cosine_map(feats, config.eval.topk),
          "neighbours_replaced": [] if replaced is None else [float(v) for v in replaced[1]]}


def write_feature_file(feats: Dict[str, Any], path: str) -> None:
  """The query and database features as a feature file with the same splits."""
  q, d = len(feats["query"]), len(feats["database"])
  np.savez(path, features=np.concatenate([feats["query"], feats["database"]]),
           labels=np.concatenate([feats["query_labels"], feats["database_labels"]]),
           query_idx=np.arange(q), database_idx=q + np.arange(d),
           train_idx=q + np.searchsorted(feats["database_ids"], feats["train_ids"]))


def input_features(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """The inputs the network hashes (no top), per split, with labels."""
  config = copy.deepcopy(config)
  config.model.top, config.model.hash_init = "none", "random"
  run = train.setup(config, workdir)
  forward = inference.make_forward(run.model, run.mesh)
  labels = np.asarray(run.source.labels)
  out = {}
  for split in ("query", "database", "train"):
    indices = getattr(run.splits, split)
    out[split] = inference.outputs_for(forward, run.state.params, run.source, indices,
                                       "features", **train.eval_kwargs(run))
    out[split + "_labels"] = labels[indices]
    out[split + "_ids"] = indices
  return out


def cosine_map(feats: Dict[str, Any], topk: int) -> float:
  """MAP@topk of ranking the database by cosine to each query (ties by database index)."""
  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  scores = unit(feats["query"]) @ unit(feats["database"]).T
  depth = scores.shape[1] if topk <= 0 else min(topk, scores.shape[1])
  order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
  ql, dl = feats["query_labels"], feats["database_labels"]
  if ql.ndim == 1:
    rel = ql[:, None] == dl[order]
  else:
    rel = np.einsum("qc,qkc->qk", ql.astype(np.int64), dl[order].astype(np.int64)) > 0
  hits = np.cumsum(rel, axis=1)
  total = np.sum(np.where(rel, hits / np.arange(1, depth + 1), 0.0), axis=1)
  return float(np.mean(np.where(hits[:, -1] > 0, total / np.maximum(hits[:, -1], 1), 0.0)))


def shallow_map(name: str, feats: Dict[str, Any], bits: int, seed: int, topk: int) -> float:
  method = baselines.METHODS[name]
  params = method.fit(feats["train"], bits, jax.random.fold_in(jax.random.key(seed), bits))
  codes = {"query_codes": np.asarray(method.encode(params, feats["query"]), np.int8),
           "database_codes": np.asarray(method.encode(params, feats["database"]), np.int8),
           "query_labels": feats["query_labels"], "database_labels": feats["database_labels"]}
  return evaluate.score(codes, topk)["map"]


def measure(base: ml_collections.ConfigDict, rows: Sequence[str], bits: Sequence[int],
            seeds: Sequence[int], jobs: int, log: Callable[[str], None], feature_dir: str,
            variant: str = "") -> Tuple[Dict[str, Dict[str, List[float]]], Dict[str, Any]]:
  """({row: {str(bits): [MAP per seed, in seed order]}} ("cosine" is the same at every code
  length), {run: its seconds and `fine_tuning_facts`}). The training runs go to `jobs` worker
  processes; the rest runs here meanwhile. The "fixed" row's feature files go to
  `feature_dir`."""
  configs = row_configs(base, variant)
  values: Dict[Tuple[str, int, int], float] = {}
  facts: Dict[str, Any] = {}
  trained = [(row, b, seed) for seed in seeds for row in rows if row in configs for b in bits]
  with futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
    pending = {}
    for row, b, seed in trained:
      config = copy.deepcopy(configs[row])
      config.seed, config.bits = seed, b
      pending[pool.submit(train_map, config)] = (row, b, seed)
    for seed in seeds:
      seeded = copy.deepcopy(base)
      seeded.seed = seed
      with tempfile.TemporaryDirectory() as workdir:
        feats = input_features(seeded, workdir)
      if "fixed" in rows:
        path = os.path.join(feature_dir, f"inputs-seed{seed}.npz")
        write_feature_file(feats, path)
        for b in bits:
          config = features_config.get_config()
          config.data.path, config.seed, config.bits = path, seed, b
          config.eval.topk = base.eval.topk
          pending[pool.submit(train_map, config)] = ("fixed", b, seed)
      for row in rows:
        for b in bits:
          if row == "cosine":
            values[row, b, seed] = cosine_map(feats, base.eval.topk)
          elif row in SHALLOW:
            values[row, b, seed] = shallow_map(row, feats, b, seed, base.eval.topk)
    for done in futures.as_completed(pending):
      (row, b, seed), (value, seconds, run_facts) = pending[done], done.result()
      values[row, b, seed] = value
      log(f"seed {seed} {row} {b} bits: {value:.4f} ({seconds:.1f} s) {run_facts or ''}")
      facts[f"{row} {b} bits seed {seed}"] = dict(run_facts, seconds=round(seconds, 1))
  maps = {row: {str(b): [values[row, b, seed] for seed in seeds] for b in bits} for row in rows}
  return maps, facts


def summary(maps: Dict[str, Dict[str, List[float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
  return {row: {b: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
                for b, v in by_bits.items()} for row, by_bits in maps.items()}


def markdown(results: Dict[str, Any]) -> str:
  bits = results["bits"]
  header = ["Method"] + [f"{b} bits" for b in bits]
  rows = [[ROW_NAMES[row]] + [f"{s[str(b)]['mean']:.3f} ± {s[str(b)]['std']:.3f}" for b in bits]
          for row, s in results["summary"].items()]
  return (f"{tables.map_label(results['topk'])} on {results['inputs']}, mean ± std over seeds "
          f"{results['seeds']} ({results['elapsed_s']:.0f} s).\n\n"
          + tables.markdown_table(header, rows) + "\n")


def main(argv: Sequence[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)
  if bool(_DATA.value) == (_CONFIG.value is not None):
    raise app.UsageError("give exactly one of --data (a feature file) or --config")
  _use_compilation_cache()
  if _DATA.value:
    base = features_config.get_config()
    base.data.path = _DATA.value
    inputs = _DATA.value
  else:
    base = cli.resolve_config(_CONFIG.value)
    inputs = f"{config_flags.get_config_filename(flags.FLAGS['config'])} ({base.data.name})"
  if _TOPK.value:
    base.eval.topk = _TOPK.value
  bits, seeds = [int(b) for b in _BITS.value], [int(s) for s in _SEEDS.value]
  unknown = sorted(set(_ROWS.value) - set(ROW_NAMES))
  if unknown:
    raise app.UsageError(f"unknown rows {unknown}; expected some of {sorted(ROW_NAMES)}")
  os.makedirs(_OUT.value, exist_ok=True)
  start = time.time()
  variant = _VARIANT.value or ("features" if _DATA.value else "")
  maps, facts = measure(base, _ROWS.value, bits, seeds, _JOBS.value,
                        lambda line: print(line, flush=True), _OUT.value, variant)
  results = {"inputs": inputs, "variant": variant, "topk": base.eval.topk if base.eval.topk > 0 else None,
             "bits": bits, "seeds": seeds, "maps": maps, "summary": summary(maps),
             "runs": facts,
             "elapsed_s": round(time.time() - start, 1)}
  evaluate.write_json(os.path.join(_OUT.value, "quality.json"), results)
  text = markdown(results)
  with open(os.path.join(_OUT.value, "quality.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)
