"""Collects finished runs into the paper's Table 1 and Table 2 (Markdown).

  python -m ucsh_jax.tables ROOT    # prints the tables and writes ROOT/results.md

Reads every `results.json` under ROOT (a run of `python -m ucsh_jax.main`: dataset, bits,
method, UCSH's ablation, topk, map) and every `baselines.json` (a `python -m ucsh_jax.baselines`
run: dataset, topk, map[method][bits]). Table 1: the shallow baselines SH, ITQ, LSH, SpH and
the deep methods in the paper's order (DeepBit, SSDH, DistillHash, UCSH), then the others
(TBH, GreedyHash, Bi-half); Table 2: UCSH and its ablations UCSH-V/C/S/R. Columns are dataset x
code length, rows with no result are left out, missing cells show "-". A results.json written
before runs recorded their method reads as the method its run.json implies.
"""

import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ucsh_jax import cli
from ucsh_jax import errors
from ucsh_jax import methods
from ucsh_jax import run_record

DATASET_NAMES = {"cifar10": "CIFAR-10", "nus_wide": "NUS-WIDE", "mirflickr": "MIRFLICKR-25K"}
METHOD_NAMES = {"sh": "SH", "itq": "ITQ", "lsh": "LSH", "sph": "SpH"}  # Table 1's order.
ABLATION_NAMES = methods.ABLATION_LABELS
TABLE1_ROWS = tuple(METHOD_NAMES.values()) + tuple(methods.row_label(m) for m in methods.NAMES)
TABLE2_ROWS = tuple(ABLATION_NAMES.values())

Cell = Tuple[str, str, int]  # (row name, dataset, bits)


def map_label(topk: Optional[int]) -> str:
  """"MAP@5000" for topk 5000, "MAP@all" for the whole database (None, or topk <= 0)."""
  return f"MAP@{topk}" if topk and topk > 0 else "MAP@all"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"cannot read {path}: {e}") from e


def _field(payload: dict, key: str, path: str):
  if key not in payload:
    raise errors.UserError(f"{path} has no {key!r} field (it has {sorted(payload)})")
  return payload[key]


def _row(run: dict, folder: str, path: str) -> str:
  """The row of a results.json: its method (or the one its run.json implies) and ablation."""
  method = run.get("method")
  if method is None:
    record = run_record.read(folder)
    method = run_record.upgrade(record["config"])["method"] if record else "ucsh"
  if method not in methods.METHODS:
    raise errors.UserError(f"{path}: unknown method {method!r}; expected one of "
                           f"{', '.join(methods.NAMES)}")
  ablation = run.get("ablation", "") if method == "ucsh" else ""
  if ablation not in ABLATION_NAMES:
    raise errors.UserError(f"{path}: unknown ablation {ablation!r}; expected one of "
                           f"{sorted(ABLATION_NAMES)}")
  return methods.row_label(method, ablation)


def collect(root: str) -> Tuple[Dict[Cell, float], Dict[Cell, str], List[Optional[int]]]:
  """Scans ROOT for results.json and baselines.json.

  Returns:
    values: MAP per (row name, dataset, bits), e.g. ("ITQ", "cifar10", 16) or ("UCSH-V", ...).
    sources: the file each value came from.
    topks: the distinct topk values met (None = whole database).
  Raises ValueError when two files give the same cell.
  """
  values, sources, topks = {}, {}, []

  def add(cell: Cell, value: float, path: str, topk: Optional[int]) -> None:
    if cell in values:
      raise errors.UserError(f"{cell[0]} on {cell[1]} at {cell[2]} bits is in both {sources[cell]} "
                             f"and {path}; keep one run per cell under the root")
    values[cell], sources[cell] = float(value), path
    topk = topk if topk and topk > 0 else None
    if topk not in topks:
      topks.append(topk)

  for folder, _, files in sorted(os.walk(root)):
    if "results.json" in files:
      path = os.path.join(folder, "results.json")
      run = _read(path)
      add((_row(run, folder, path), _field(run, "dataset", path),
           int(_field(run, "bits", path))), _field(run, "map", path), path,
          _field(run, "topk", path))
    if "baselines.json" in files:
      path = os.path.join(folder, "baselines.json")
      run = _read(path)
      for method, by_bits in _field(run, "map", path).items():
        if method not in METHOD_NAMES:
          raise errors.UserError(f"{path}: unknown method {method!r}; expected one of "
                                 f"{sorted(METHOD_NAMES)}")
        for bits, value in by_bits.items():
          add((METHOD_NAMES[method], _field(run, "dataset", path), int(bits)), value, path,
              _field(run, "topk", path))
  return values, sources, topks


def _table(values: Dict[Cell, float], row_names: Sequence[str]) -> Optional[str]:
  rows = [r for r in row_names if any(cell[0] == r for cell in values)]
  if not rows:
    return None
  datasets = {cell[1] for cell in values if cell[0] in rows}
  datasets = [d for d in DATASET_NAMES if d in datasets] + sorted(datasets - set(DATASET_NAMES))
  columns = [(d, b) for d in datasets
             for b in sorted({cell[2] for cell in values if cell[0] in rows and cell[1] == d})]
  header = ["Method"] + [f"{DATASET_NAMES.get(d, d)} {b} bits" for d, b in columns]
  body = [[r] + [f"{values[(r, d, b)]:.4f}" if (r, d, b) in values else "-" for d, b in columns]
          for r in rows]
  return markdown_table(header, body)


def render(root: str) -> str:
  """The Markdown of Table 1 and Table 2 for the runs under `root`."""
  values, _, topks = collect(root)
  if not values:
    raise errors.UserError(f"no results.json or baselines.json under {root}")
  label = (map_label(topks[0]) if len(topks) == 1 else
           "MAP (mixed cut-offs: " + ", ".join(map_label(t) for t in topks) + ")")
  parts = []
  for number, rows, what in ((1, TABLE1_ROWS, "the shallow baselines and the deep methods"),
                             (2, TABLE2_ROWS, "UCSH and its variants")):
    table = _table(values, rows)
    if table:
      parts.append(f"Table {number}. {label} of {what}.\n\n{table}\n")
  return "\n".join(parts)


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise errors.UserError("expected one argument, the folder of the runs",
                           hint="python -m ucsh_jax.tables ROOT")
  root = cli.absolute_path(argv[1])
  if not os.path.isdir(root):
    raise errors.UserError(f"{root} is not a folder")
  text = render(root)
  path = os.path.join(root, "results.md")
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  print(text)
  print(f"Written to {path}")


if __name__ == "__main__":
  cli.run(main, positional_arguments=True)
