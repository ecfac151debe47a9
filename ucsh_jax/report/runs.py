"""The codes a report shows: a UCSH run's (encoded when missing) and the baselines' codes.

A UCSH workdir holds its recorded config, checkpoints, `splits/` and, after `--mode=encode` (or a
first report), `codes.npz`. A baselines workdir (`python -m ucsh_jax.baselines`) holds
`baselines.json` and `baselines_codes.npz`. Everything compared with the report's run must use
the same data, the same query and database items and the same MAP@topk: anything else is
refused with a UserError, since mixing them would compare different protocols.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import ml_collections
import numpy as np

from ucsh_jax import errors
from ucsh_jax import methods
from ucsh_jax import npz as npz_lib
from ucsh_jax import run_record
from ucsh_jax import tables
from ucsh_jax import train
from ucsh_jax import workdir_lock

CODES_FILE = "codes.npz"
BASELINES_JSON = "baselines.json"
BASELINES_CODES = "baselines_codes.npz"
CODE_KEYS = ("query_codes", "database_codes", "query_labels", "database_labels")


@dataclasses.dataclass
class MethodCodes:
  """One method's codes at one code length, on known splits.

  Attributes:
    label: legend name ("UCSH", "UCSH-V (run2)", "ITQ", ...).
    codes: the arrays of codes.npz (CODE_KEYS): codes (q, k) / (m, k) +-1, labels.
    query_ids, database_ids: (q,), (m,) int64 positions of the rows in the data source.
    topk: the run's MAP@topk (None: the whole database).
    dataset: config.data.name.
    origin: the file the codes came from (for messages).
  """
  label: str
  codes: Dict[str, np.ndarray]
  query_ids: np.ndarray
  database_ids: np.ndarray
  topk: Optional[int]
  dataset: str
  origin: str

  @property
  def bits(self) -> int:
    return int(self.codes["query_codes"].shape[1])


def _topk(value) -> Optional[int]:
  return int(value) if value is not None and int(value) > 0 else None


def is_ucsh_run(workdir: str) -> bool:
  return (os.path.exists(os.path.join(workdir, CODES_FILE))
          or os.path.isdir(os.path.join(workdir, "checkpoints")))


def _latest_checkpoint_mtime(workdir: str) -> float:
  folder = os.path.join(workdir, "checkpoints")
  steps = [n for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return os.path.getmtime(os.path.join(folder, max(steps, key=int))) if steps else 0.0


def _split_ids(workdir: str, name: str, npz: Dict[str, np.ndarray]) -> np.ndarray:
  """`{name}_ids` of a codes file, else the workdir's saved split `splits/{name}.npy`."""
  if f"{name}_ids" in npz:
    return np.asarray(npz[f"{name}_ids"], np.int64)
  path = os.path.join(workdir, "splits", f"{name}.npy")
  if not os.path.exists(path):
    raise errors.UserError(f"{workdir} has neither {name}_ids in its codes nor {path}")
  return np.load(path).astype(np.int64)


def load_ucsh(workdir: str) -> Tuple[MethodCodes, ml_collections.ConfigDict]:
  """(MethodCodes, config) of the UCSH run in `workdir`.

  Encodes the latest checkpoint into codes.npz (`train.evaluate_checkpoint`, holding the
  workdir's lock) when the file is missing or older than that checkpoint.
  """
  config = run_record.load_config(workdir)
  path = os.path.join(workdir, CODES_FILE)
  if not os.path.exists(path) or os.path.getmtime(path) < _latest_checkpoint_mtime(workdir):
    with workdir_lock.lock_for_run(workdir, "ucsh_jax.report (encoding the run)"):
      train.evaluate_checkpoint(config, workdir, write_codes=True)
  npz = npz_lib.read(path, "the codes file", required=CODE_KEYS,
                     hint="delete it: the report then encodes the run again")
  name = methods.row_label(config.method, config.get("ablation", ""))
  codes = MethodCodes(
      label=name, codes={k: npz[k] for k in CODE_KEYS},
      query_ids=_split_ids(workdir, "query", npz), database_ids=_split_ids(workdir, "database", npz),
      topk=_topk(config.eval.topk), dataset=config.data.name, origin=path)
  return codes, config


def load_baselines(workdir: str) -> List[MethodCodes]:
  """Every method x code length of the baselines run in `workdir`, in its methods order."""
  summary_path = os.path.join(workdir, BASELINES_JSON)
  path = os.path.join(workdir, BASELINES_CODES)
  if not os.path.exists(path):
    raise errors.UserError(
        f"{workdir} has {BASELINES_JSON} but no {BASELINES_CODES}",
        hint="run python -m ucsh_jax.baselines again with this workdir; it now writes the codes")
  with open(summary_path) as f:
    summary = json.load(f)
  npz = npz_lib.read(path, "the baselines' codes file")
  found = []
  for method in summary["methods"]:
    for bits in summary["bits"]:
      prefix = f"{method}_{bits}_"
      found.append(MethodCodes(
          label=tables.METHOD_NAMES.get(method, method),
          codes={"query_codes": npz[prefix + "query_codes"],
                 "database_codes": npz[prefix + "database_codes"],
                 "query_labels": npz["query_labels"], "database_labels": npz["database_labels"]},
          query_ids=npz["query_ids"].astype(np.int64),
          database_ids=npz["database_ids"].astype(np.int64),
          topk=_topk(summary["topk"]), dataset=summary["dataset"], origin=path))
  return found


def baselines_under(workdir: str) -> List[str]:
  """`workdir` and its immediate subfolders that hold a baselines run, in name order."""
  candidates = [workdir] + sorted(
      os.path.join(workdir, n) for n in os.listdir(workdir)
      if os.path.isdir(os.path.join(workdir, n)))
  return [d for d in candidates if os.path.exists(os.path.join(d, BASELINES_JSON))]


def load_compared(workdir: str) -> List[MethodCodes]:
  """The codes of a --compare workdir: its UCSH run and/or its baselines, labelled
  "<name> (<folder name>)"."""
  if not os.path.isdir(workdir):
    raise errors.UserError(f"--compare: {workdir} is not a directory")
  found = []
  if is_ucsh_run(workdir):
    found.append(load_ucsh(workdir)[0])
  if os.path.exists(os.path.join(workdir, BASELINES_JSON)):
    found += load_baselines(workdir)
  for entry in found:  # Named by their folder, apart from the report's run and its baselines.
    entry.label = f"{entry.label} ({os.path.basename(os.path.normpath(workdir))})"
  if not found:
    raise errors.UserError(
        f"--compare: {workdir} holds neither a UCSH run (codes.npz or checkpoints/) nor "
        f"baselines ({BASELINES_JSON})")
  return found


def check_comparable(reference: MethodCodes, other: MethodCodes) -> None:
  """Raises UserError unless `other` has `reference`'s data, query/database items and topk."""
  where = f"{other.label} from {other.origin}"
  if other.dataset != reference.dataset:
    raise errors.UserError(f"{where} is on dataset {other.dataset!r}, the report's run on "
                           f"{reference.dataset!r}")
  for name in ("query", "database"):
    mine, theirs = getattr(reference, f"{name}_ids"), getattr(other, f"{name}_ids")
    if mine.shape != theirs.shape or not np.array_equal(mine, theirs):
      raise errors.UserError(
          f"{where} uses other {name} items than the report's run ({len(theirs)} vs "
          f"{len(mine)}, or the same number drawn differently): other splits",
          hint="run it with the same config and seed, or in the run's workdir")
  if other.topk != reference.topk:
    raise errors.UserError(
        f"{where} scores {tables.map_label(other.topk)}, the report's run "
        f"{tables.map_label(reference.topk)}",
        hint="use the same --config.eval.topk for both")


def by_code_length(entries: List[MethodCodes]) -> Dict[int, List[MethodCodes]]:
  """Groups by code length, the first entry's length first, then increasing."""
  groups: Dict[int, List[MethodCodes]] = {}
  first = entries[0].bits
  for e in sorted(entries, key=lambda e: (e.bits != first, e.bits)):
    groups.setdefault(e.bits, []).append(e)
  return groups
