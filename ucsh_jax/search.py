"""Search a trained run by image or features: `python -m ucsh_jax.search --workdir=W --query=PATH`.

  python -m ucsh_jax.search --workdir=runs/digits --query_index=0 --json
  python -m ucsh_jax.search --workdir=runs/photos --query=cat.jpg --topk=5
  python -m ucsh_jax.search --workdir=runs/photos --query=queries/ --database=~/Pictures

PATH is an image file, a folder of images (each one a query) or a features `.npz` (each row a
query, for runs on feature files); `--query_index=N` takes the N-th query of the run's own split
instead. The model and its preprocessing are rebuilt from the run's record (`run.json`) and its
latest checkpoint; the run's database index is the one `--mode=encode` wrote. `--database`
ranks another collection (a folder of images or a features `.npz`), encoded once and cached in
WORKDIR/search_cache/. Reads the workdir only (it takes no lock), apart from that cache.
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import flags
import numpy as np

from ucsh_jax import cli
from ucsh_jax import errors
from ucsh_jax import searcher as searcher_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs, so that importing this module is free)."""
  flags.DEFINE_string("workdir", None, "The run's directory (trained, then encoded).")
  flags.DEFINE_string("query", None, "An image file, a folder of images or a features .npz.")
  flags.DEFINE_integer("query_index", None,
                       "Search with the N-th query of the run's own query split.")
  flags.DEFINE_integer("topk", 10, "Results per query.")
  flags.DEFINE_bool("json", False, "Print one JSON list of {query, results} objects.")
  flags.DEFINE_string("database", None,
                      "Search this folder of images or features .npz instead of the run's "
                      "database (encoded once, cached in WORKDIR/search_cache/).")
  flags.mark_flags_as_required(["workdir"])

# Query images encoded per forward pass batch group (bounded memory for large folders).
_QUERY_CHUNK = 64


def check_query(path: str) -> None:
  """A UserError for a --query that cannot be one, before the run is loaded: a missing path,
  a folder without images, a file (not .npz) that is not an image."""
  if not os.path.exists(path):
    raise errors.UserError(f"--query {path} does not exist")
  if os.path.isdir(path):
    searcher_lib.list_images(path)
  elif not path.endswith(".npz"):
    searcher_lib.read_image(path)


def queries_from_path(searcher: searcher_lib.Searcher,
                      path: str) -> List[Tuple[Dict[str, Any], np.ndarray]]:
  """(query description, code (1, bits)) for each query in the file, folder or .npz `path`."""
  if not os.path.exists(path):
    raise errors.UserError(f"--query {path} does not exist")
  if path.endswith(".npz"):
    rows = searcher_lib.read_features(path)
    codes = searcher.encode_features(rows.features)
    return [({"name": f"{path}[{i}]", "id": i, "label": searcher_lib.label_value(rows.labels, i),
              "path": path}, codes[i:i + 1]) for i in range(len(rows))]
  if os.path.isdir(path):
    paths = searcher_lib.list_images(path)
  elif searcher.kind != "image":
    raise errors.UserError(f"--query {path}: this run hashes feature vectors of width "
                           f"{searcher.input_dim}; give a features .npz")
  else:
    paths = [path]
  found = []
  for start in range(0, len(paths), _QUERY_CHUNK):
    chunk = paths[start:start + _QUERY_CHUNK]
    codes = searcher.encode_images([searcher_lib.read_image(p) for p in chunk])
    found += [({"name": p, "id": start + j if len(paths) > 1 else None, "label": None, "path": p},
               codes[j:j + 1]) for j, p in enumerate(chunk)]
  return found


def answers(searcher: searcher_lib.Searcher, query: Optional[str], query_index: Optional[int],
            topk: int) -> List[Dict[str, Any]]:
  """The search answers: [{"query": {...}, "results": [{"id", "distance", "label", "path"}]}]."""
  if (query is None) == (query_index is None):
    raise errors.UserError("give exactly one of --query=PATH and --query_index=N")
  if query_index is not None:
    queries = [searcher.run_query(query_index)]
  else:
    queries = queries_from_path(searcher, query)
  codes = np.concatenate([code for _, code in queries])
  return [{"query": description, "results": hits}
          for (description, _), hits in zip(queries, searcher.search(codes, topk))]


def format_text(found: Sequence[Dict[str, Any]]) -> str:
  """Per query a header line, then one line per result: rank, id, distance, label, path."""
  lines = []
  for answer in found:
    lines.append(f"query: {answer['query']['name']}")
    lines.append(f"  {'rank':>4}  {'id':>8}  {'distance':>8}  {'label':>8}  path")
    for rank, hit in enumerate(answer["results"], 1):
      label = "-" if hit["label"] is None else json.dumps(hit["label"])
      lines.append(f"  {rank:>4}  {hit['id']:>8}  {hit['distance']:>8}  {label:>8}  "
                   f"{hit['path'] or '-'}")
  return "\n".join(lines)


def main(argv):
  del argv  # cli.run refuses arguments other than flags.
  workdir = cli.absolute_path(FLAGS.workdir)
  query = cli.absolute_path(FLAGS.query)
  database = cli.absolute_path(FLAGS.database)
  if query is not None:
    check_query(query)
  searcher = searcher_lib.Searcher.from_workdir(workdir, database=database)
  found = answers(searcher, query, FLAGS.query_index, FLAGS.topk)
  print(json.dumps(found, indent=1) if FLAGS.json else format_text(found))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
