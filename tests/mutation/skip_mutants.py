"""Marks as skipped the mutants not worth a test run.

Run after `cosmic-ray init` and `cr-filter-operators`:

  python tests/mutation/skip_mutants.py SESSION.sqlite [--numbers=plus-one]

With `--numbers=plus-one`, NumberReplacer keeps only its +1 replacement of each literal (its
-1 twin is skipped): half the NumberReplacer mutants, for a shorter run (README.md uses it
for train_step, metrics and kmeans).

Two kinds are always skipped:
- mutants inside an f-string (the text of an error message, e.g. `{(n, n)}` in a ValueError);
- the bare `*` of a keyword-only parameter list turned into `/` (ReplaceBinaryOperator_Mul_*):
  that only changes which arguments may be passed by position or by name, not what the
  function computes.
"""

import ast
import io
import sys
import tokenize

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def _spans(path):
  """(f-string spans, positions of bare `*` markers) of the module at `path`."""
  with open(path, encoding="utf-8") as f:
    source = f.read()
  strings = [((node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset))
             for node in ast.walk(ast.parse(source)) if isinstance(node, ast.JoinedStr)]
  tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT)]
  stars = {tok.start for tok, nxt in zip(tokens, tokens[1:])
           if tok.string == "*" and nxt.string in (",", ")")}
  return strings, stars


def main(session, plus_one_numbers=False):
  cache = {}
  counts = {"message": 0, "star": 0, "number": 0}
  with use_db(session, WorkDB.Mode.open) as db:
    for item in list(db.pending_work_items):
      for mutation in item.mutations:
        path = str(mutation.module_path)
        if path not in cache:
          cache[path] = _spans(path)
        strings, stars = cache[path]
        pos = tuple(mutation.start_pos)
        if any(start <= pos < end for start, end in strings):
          why, kind = "Inside an f-string (message text)", "message"
        elif pos in stars and mutation.operator_name.startswith("core/ReplaceBinaryOperator_Mul_"):
          why, kind = "Keyword-only marker `*` of a parameter list", "star"
        elif (plus_one_numbers and mutation.operator_name == "core/NumberReplacer"
              and mutation.occurrence % 2 == 1):
          why, kind = "NumberReplacer -1 twin (--numbers=plus-one)", "number"
        else:
          continue
        db.set_result(item.job_id, WorkResult(output=why, worker_outcome=WorkerOutcome.SKIPPED))
        counts[kind] += 1
        break
  print(f"{session}: skipped {counts['message']} mutants inside f-strings, "
        f"{counts['star']} of keyword-only markers, {counts['number']} NumberReplacer -1 twins")


if __name__ == "__main__":
  if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--numbers=plus-one"]):
    sys.exit(__doc__)
  main(sys.argv[1], plus_one_numbers=sys.argv[2:] == ["--numbers=plus-one"])
