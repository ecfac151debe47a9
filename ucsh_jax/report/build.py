"""`write_report`: a run's workdir -> WORKDIR/report/index.html with its PNGs and data.json."""

import html
import json
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from ucsh_jax import data
from ucsh_jax import tables
from ucsh_jax.report import curves as curves_lib
from ucsh_jax.report import events
from ucsh_jax.report import gallery
from ucsh_jax.report import plots
from ucsh_jax.report import runs

FOLDER = "report"
RETRIEVAL_PLOTS = (("pr", "Precision-recall", plots.precision_recall),
                   ("precision_at_k", "Precision@k", plots.precision_at_k),
                   ("precision_radius", "Precision within Hamming radius r",
                    plots.precision_within_radius))
_STYLE = """
body { font-family: sans-serif; margin: 1em; color: #222; max-width: 1500px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots img { border: 1px solid #eee; max-width: none; }
.gallery-row { display: flex; gap: 6px; margin-bottom: 8px; align-items: flex-start; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img { width: 64px; height: 64px; image-rendering: pixelated; border: 4px solid #999; }
figure.query img { border-color: #1565c0; }
figure.relevant img { border-color: #2e7d32; }
figure.irrelevant img { border-color: #c62828; }
figure.query { margin-right: 14px; }
table { border-collapse: collapse; margin-bottom: .8em; }
td, th { padding: 2px 10px; text-align: left; }
"""


def _collect(workdir: str,
             compare: Sequence[str]) -> Tuple[List[runs.MethodCodes], ml_collections.ConfigDict]:
  """The report's run first, then baselines under the workdir, then the --compare workdirs."""
  main, config = runs.load_ucsh(workdir)
  entries, seen = [main], {os.path.realpath(workdir)}
  for folder in runs.baselines_under(workdir):
    entries += runs.load_baselines(folder)
    seen.add(os.path.realpath(folder))
  for folder in compare:
    if os.path.realpath(folder) in seen:
      continue
    seen.add(os.path.realpath(folder))
    entries += runs.load_compared(folder)
  for entry in entries[1:]:
    runs.check_comparable(main, entry)
  return entries, config


def _cluster_matrix(scalars: Dict[str, events.Series]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """(steps (E,), sizes (E, N)) from the `cluster_size/{j}` scalars; None when not logged."""
  tags = sorted((t for t in scalars if re.fullmatch(r"cluster_size/\d+", t)),
                key=lambda t: int(t.split("/")[1]))
  if not tags:
    return None
  steps = scalars[tags[0]][0]
  return steps, np.stack([scalars[t][1] for t in tags], axis=1)


def _img(saved: Tuple[str, Tuple[int, int]], alt: str) -> str:
  """A saved figure (its file name, its display size in CSS pixels), shown at that size: one
  figure inch per CSS inch, so its fonts are drawn at their point sizes."""
  name, (width, height) = saved
  src = html.escape(name)
  return (f'<a href="{src}"><img src="{src}" alt="{html.escape(alt)}" width="{width}" '
          f'height="{height}"></a>')


def _save(fig, out_dir: str, name: str) -> Tuple[str, Tuple[int, int]]:
  return name, plots.save(fig, os.path.join(out_dir, name))


def _training_section(workdir: str, out_dir: str, steps_per_epoch: int) -> str:
  scalars = events.read_scalars(workdir)
  images = []
  if any(t in scalars for t in plots.LOSS_TERMS):
    images.append(_img(_save(plots.losses(scalars), out_dir, "losses.png"), "loss terms"))
  if "threshold" in scalars:
    images.append(_img(_save(plots.threshold(*scalars["threshold"], steps_per_epoch), out_dir,
                             "threshold.png"), "threshold s_t"))
  if any(t in scalars for t in plots.CHANGE_TERMS):
    images.append(_img(_save(plots.epoch_changes(scalars, steps_per_epoch), out_dir,
                             "epoch_changes.png"), "what changed per epoch"))
  clusters, note = _cluster_matrix(scalars), ""
  if clusters is not None:
    fig = plots.cluster_sizes(clusters[0] // max(steps_per_epoch, 1), clusters[1])
    images.append(_img(_save(fig, out_dir, "cluster_sizes.png"), "cluster sizes"))
  elif "cluster_sizes_min" in scalars:
    steps, smallest = scalars["cluster_sizes_min"]
    fig = plots.smallest_cluster(steps // max(steps_per_epoch, 1), smallest)
    images.append(_img(_save(fig, out_dir, "cluster_sizes.png"), "smallest cluster size"))
    note = ("<p>This run logged only the smallest cluster's size per epoch "
            "(cluster_sizes_min), not every cluster's.</p>")
  if not images:
    return f"<p>No training scalars in {html.escape(workdir)} (no TensorBoard event files).</p>"
  return note + f'<div class="plots">{"".join(images)}</div>'


def _retrieval_section(groups: Dict[int, List[runs.MethodCodes]], out_dir: str):
  """HTML of the per-code-length plots and the computed curves ({bits: [Curves]})."""
  parts, computed = [], {}
  labels = list(dict.fromkeys(e.label for group in groups.values() for e in group))
  colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
  for bits, group in groups.items():
    computed[bits] = [curves_lib.curves(e.codes, label=e.label, topk=e.topk) for e in group]
    images = [_img(_save(draw(computed[bits], colors), out_dir, f"{name}_{bits}.png"),
                   f"{title}, {bits} bits") for name, title, draw in RETRIEVAL_PLOTS]
    rows = "".join(f"<tr><td>{html.escape(c.label)}</td><td>{c.map:.4f}</td></tr>"
                   for c in computed[bits])
    label = tables.map_label(computed[bits][0].topk)
    parts.append(f'<h3 id="bits-{bits}">{bits} bits</h3><table><tr><th>method</th>'
                 f'<th>{label}</th></tr>{rows}</table><div class="plots">{"".join(images)}</div>')
  return "\n".join(parts), computed


def write_report(workdir: str, compare: Sequence[str] = ()) -> str:
  """Writes WORKDIR/report/ (index.html, the PNGs, gallery/ and data.json); returns the page.

  The folder is replaced as a whole, once the compared runs have been accepted.

  Args:
    workdir: a UCSH run's workdir (encoded first when codes.npz is missing).
    compare: more workdirs (UCSH runs or baselines) on the same splits and topk.
  """
  entries, config = _collect(workdir, compare)
  out_dir = os.path.join(workdir, FOLDER)
  shutil.rmtree(out_dir, ignore_errors=True)  # No figure of an earlier report stays behind.
  os.makedirs(out_dir)
  main = entries[0]
  retrieval, computed = _retrieval_section(runs.by_code_length(entries), out_dir)
  steps_per_epoch = len(np.load(os.path.join(workdir, "splits", "train.npy"))) // config.batch_size
  training = _training_section(workdir, out_dir, steps_per_epoch)
  balance = curves_lib.bit_balance(main.codes["database_codes"])
  bit_balance = _save(plots.bit_balance(
      balance, f"{main.label}: fraction of +1 per bit (database codes)"), out_dir,
                      "bit_balance.png")
  source = data.get_source(config.data)
  gallery_rows = gallery.rows(main)
  gallery_html = gallery.render(gallery_rows, source, out_dir)
  with open(os.path.join(out_dir, "data.json"), "w") as f:
    json.dump({"curves": {str(b): [c.to_json() for c in cs] for b, cs in computed.items()},
               "bit_balance": balance.tolist()}, f, indent=1)
  summary = (f"{html.escape(config.data.name)}, {main.bits} bits, "
             f"{len(main.query_ids)} queries, {len(main.database_ids)} database items; "
             f"{tables.map_label(main.topk)} = {computed[main.bits][0].map:.4f}")
  page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>UCSH report: {html.escape(workdir)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>UCSH report</h1>
<p>{html.escape(os.path.abspath(workdir))}: {summary}</p>
<h2 id="retrieval">Retrieval</h2>
{retrieval}
<h2 id="training">Training</h2>
{training}
<h2 id="codes">Code-bit balance</h2>
<div class="plots">{_img(bit_balance, "bit balance")}</div>
<h2 id="gallery">Retrieval gallery</h2>
<p>{len(gallery_rows)} queries (seed {gallery.SEED}), each followed by its top
{len(gallery_rows[0].neighbour_ids_K)} neighbours by Hamming distance (under each):
green = shares a label with the query, red = does not.</p>
<div class="gallery">
{gallery_html}
</div>
</body></html>
"""
  path = os.path.join(out_dir, "index.html")
  with open(path, "w") as f:
    f.write(page)
  return path
