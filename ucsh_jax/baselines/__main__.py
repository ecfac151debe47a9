"""Shallow baselines on UCSH's features, under UCSH's protocol (the paper's Table 1 rows).

  python -m ucsh_jax.baselines --config=configs/cifar.py --workdir=runs/cifar_baselines \
      --config.model.pretrained=/path/to/vgg16-397923af.pth [--methods=sh,itq,lsh,sph] \
      [--bits=16,32,64] [--save_features]

The features are those UCSH starts from: fc7 of the config's VGG16 (pretrained when
`config.model.pretrained` is set, else randomly initialised with `config.seed`), or the vectors of
a feature file (`config.data.name == "features"`). Splits are the run's protocol splits (saved in
or read from WORKDIR/splits/); each method is fit on the training split, encodes the query and
database splits and is scored with MAP@`config.eval.topk` (-1: the whole database). Writes
WORKDIR/baselines.json, WORKDIR/baselines.md, the codes with the split ids in
WORKDIR/baselines_codes.npz (for the curves of `python -m ucsh_jax.report`), and with
--save_features WORKDIR/features.npz, a feature file of the query and database rows with their
splits (usable with configs/features.py). WORKDIR may be the UCSH run's own workdir (same
config): its splits are reused and the report finds the baselines there.
"""

import os
import time
from typing import Any, Dict, Sequence

from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from ucsh_jax import cli
from ucsh_jax import data
from ucsh_jax import distributed
from ucsh_jax import errors
from ucsh_jax import evaluate
from ucsh_jax import extract
from ucsh_jax import feature_file
from ucsh_jax import inference
from ucsh_jax import run_record
from ucsh_jax import tables
from ucsh_jax import train
from ucsh_jax import workdir_lock
from ucsh_jax.baselines import METHODS

DEFAULT_METHODS = tuple(tables.METHOD_NAMES)  # The paper's Table 1 order: SH, ITQ, LSH, SpH.
DEFAULT_BITS = (16, 32, 64)
CODES_FILE = "baselines_codes.npz"


def fit_key(seed: int, num_bits: int) -> jax.Array:
  """The key every method is fit with at `num_bits`: fold_in(key(seed), num_bits)."""
  return jax.random.fold_in(jax.random.key(seed), num_bits)


def _train_rows(splits: data.Splits) -> np.ndarray:
  """Positions of the training items within splits.database (train is a subset of it)."""
  order = np.argsort(splits.database)
  return order[np.searchsorted(splits.database, splits.train, sorter=order)]


def extract_features(run: train.Run) -> Dict[str, np.ndarray]:
  """Features {"query", "database", "train"}, each (len(split), d) float32 in split order.

  fc7 of the run's initial parameters in eval mode, or a feature file's own vectors (not the
  output of the model's trainable top); the training rows are taken from the database rows
  (train is a subset of it).
  """
  features = {}
  if run.source.kind == "features":
    for name in ("query", "database"):
      features[name] = np.stack([np.asarray(run.source[int(i)]["features"], np.float32)
                                 for i in getattr(run.splits, name)])
  else:
    forward = inference.make_forward(run.model, run.mesh)
    for name in ("query", "database"):
      features[name] = inference.outputs_for(forward, run.state.params, run.source,
                                             getattr(run.splits, name), "features",
                                             **train.eval_kwargs(run))
  features["train"] = features["database"][_train_rows(run.splits)]
  return features


def encode_methods(features: Dict[str, np.ndarray], *, methods: Sequence[str],
                   bits: Sequence[int], seed: int) -> Dict[str, np.ndarray]:
  """Fits every method at every code length and encodes the query and database features.

  Returns:
    {f"{method}_{bits}_query_codes": (q, bits) int8 +-1, f"{method}_{bits}_database_codes":
    (m, bits) int8 +-1} for each method and code length.
  """
  codes = {}
  for name in methods:
    method = METHODS[name]
    for num_bits in bits:
      params = method.fit(features["train"], num_bits, fit_key(seed, num_bits))
      for split in ("query", "database"):
        codes[f"{name}_{num_bits}_{split}_codes"] = np.asarray(
            method.encode(params, features[split]), np.int8)
  return codes


def score_methods(codes: Dict[str, np.ndarray], query_labels: np.ndarray,
                  database_labels: np.ndarray, *, methods: Sequence[str], bits: Sequence[int],
                  topk: int) -> Dict[str, Dict[str, Dict[str, Any]]]:
  """evaluate.score of every method at every code length: {method: {str(bits): scores}}."""
  return {name: {str(b): evaluate.score(
      {"query_codes": codes[f"{name}_{b}_query_codes"],
       "database_codes": codes[f"{name}_{b}_database_codes"],
       "query_labels": query_labels, "database_labels": database_labels}, topk) for b in bits}
          for name in methods}


def markdown(results: Dict[str, Any]) -> str:
  """The results as a methods x bits Markdown table with a short heading."""
  header = ["Method"] + [f"{b} bits" for b in results["bits"]]
  rows = [[tables.METHOD_NAMES[m]] + [f"{results['map'][m][str(b)]:.4f}" for b in results["bits"]]
          for m in results["methods"]]
  return (f"{tables.map_label(results['topk'])} of the shallow baselines on {results['dataset']}: "
          f"{results['features']} ({results['feature_dim']}-d); {results['num_query']} queries, "
          f"{results['num_database']} database items, {results['num_train']} training items.\n\n"
          + tables.markdown_table(header, rows) + "\n")


def _check_choice(methods: Sequence[str], bits: Sequence[int]) -> None:
  if not methods or any(m not in METHODS for m in methods):
    raise errors.UserError(
        f"methods {list(methods)}: expected a non-empty list from {sorted(METHODS)}")
  if not bits or any(b < 1 for b in bits):
    raise errors.UserError(f"bits {list(bits)}: expected a non-empty list of positive integers")


def _write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _write_features(path: str, run: train.Run, features: Dict[str, np.ndarray],
                    provenance: str) -> None:
  """A feature file of the query rows then the database rows, with the splits and ids."""
  splits = run.splits
  ids = np.concatenate([splits.query, splits.database])
  feature_file.write(path, np.concatenate([features["query"], features["database"]]),
                     np.asarray(run.source.labels)[ids], ids, splits, provenance)


def run_baselines(config: ml_collections.ConfigDict, workdir: str,
                  methods: Sequence[str] = DEFAULT_METHODS, bits: Sequence[int] = DEFAULT_BITS,
                  save_features: bool = False) -> Dict[str, Any]:
  """Fits, encodes and scores `methods` at code lengths `bits` on the config's features.

  Methods are run, written and printed in the paper's Table 1 order (tables.METHOD_NAMES).

  Process 0 writes the codes to WORKDIR/baselines_codes.npz (`encode_methods`' arrays with
  `query_ids`, `database_ids` (positions in the data set) and `query_labels`,
  `database_labels`), for the report's curves. Returns (and process 0 writes as
  WORKDIR/baselines.json, with the table in baselines.md):
    {"dataset", "features" (what they are), "feature_dim", "num_query", "num_database",
     "num_train", "seed", "topk" (None = whole database), "methods", "bits",
     "map": {method: {str(bits): MAP}}, "scores": {method: {str(bits): evaluate.score(...)}},
     "elapsed_s"}.
  Each method is fit with `fit_key(config.seed, bits)`.
  """
  start_time = time.time()
  bits = [int(b) for b in bits]
  _check_choice(methods, bits)
  methods = [m for m in tables.METHOD_NAMES if m in methods]  # Table 1's order, whatever asked.
  # A feature file needs no network: its model is only described (not initialised).
  run = train.setup(config, workdir, restoring=config.data.name == "features")
  features = extract_features(run)
  feature_dim = int(features["train"].shape[1])
  if "itq" in methods and max(bits) > feature_dim:
    raise errors.UserError(f"--bits={','.join(str(b) for b in bits)}: ITQ needs at most as many "
                           f"bits as the {feature_dim} dimensions of the features",
                           hint="leave itq out of --methods for longer codes")
  labels = np.asarray(run.source.labels)
  codes = encode_methods(features, methods=methods, bits=bits, seed=config.seed)
  codes.update(query_ids=np.asarray(run.splits.query, np.int64),
               database_ids=np.asarray(run.splits.database, np.int64),
               query_labels=labels[run.splits.query], database_labels=labels[run.splits.database])
  scores = score_methods(codes, codes["query_labels"], codes["database_labels"],
                         methods=methods, bits=bits, topk=config.eval.topk)
  results = {
      "dataset": config.data.name, "features": extract.describe_initial_features(config),
      "feature_dim": int(features["train"].shape[1]), "num_query": len(run.splits.query),
      "num_database": len(run.splits.database), "num_train": len(run.splits.train),
      "seed": config.seed, "topk": config.eval.topk if config.eval.topk > 0 else None,
      "methods": methods, "bits": bits,
      "map": {m: {b: s["map"] for b, s in by_bits.items()} for m, by_bits in scores.items()},
      "scores": scores, "elapsed_s": round(time.time() - start_time, 2)}
  if jax.process_index() == 0:
    _write_npz(os.path.join(workdir, CODES_FILE), codes)
    evaluate.write_json(os.path.join(workdir, "baselines.json"), results)
    with open(os.path.join(workdir, "baselines.md"), "w") as f:
      f.write(markdown(results))
    if save_features:
      _write_features(os.path.join(workdir, extract.FEATURES_FILE), run, features,
                      results["features"])
  return results


def _define_flags() -> None:
  """Flags, defined only when run as a program, so that importing this module defines none."""
  flags.DEFINE_string("workdir", None, "Directory for the splits and the results.", required=True)
  config_flags.DEFINE_config_file("config", "configs/digits.py", "Config file.", lock_config=True)
  flags.DEFINE_list("methods", list(DEFAULT_METHODS), f"Methods, from {sorted(METHODS)}.")
  flags.DEFINE_list("bits", [str(b) for b in DEFAULT_BITS], "Code lengths.")
  flags.DEFINE_bool("save_features", False, "Also write WORKDIR/features.npz.")


def main(argv):
  del argv  # cli.run refuses arguments other than flags.
  args = flags.FLAGS
  try:
    bits = [int(b) for b in args.bits]
  except ValueError as e:
    raise errors.UserError(f"--bits={','.join(args.bits)}: expected integers") from e
  config = cli.resolve_config(args.config)
  workdir = cli.absolute_path(args.workdir)
  distributed.initialize()
  with workdir_lock.lock_for_run(workdir, "ucsh_jax.baselines"):
    run_record.check(config, workdir)
    results = run_baselines(config, workdir, args.methods, bits,
                            save_features=args.save_features)
  if jax.process_index() == 0:
    print(markdown(results))


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
