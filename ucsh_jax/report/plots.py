"""The report's figures (matplotlib, Agg backend): each function returns one Figure.

The page shows a figure at DISPLAY_DPI CSS pixels per figure inch (its PNG holds SAVE_DPI
pixels per inch, sharp on high-density screens), so a font of n points is drawn at n CSS points
at 100 % zoom: no text is smaller than MIN_FONT_PT (tick labels, legends), axis labels are
LABEL_PT and titles TITLE_PT.
"""

from typing import Dict, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
import numpy as np

from ucsh_jax import tables
from ucsh_jax.report import curves as curves_lib
from ucsh_jax.report import events

_SIZE = (4.0, 3.0)
DISPLAY_DPI = 96  # CSS pixels per inch: the page draws a figure at its size in inches.
SAVE_DPI = 2 * DISPLAY_DPI
MIN_FONT_PT, LABEL_PT, TITLE_PT = 10, 11, 12
# The train step's scalars (train_step.py), in panel order; the VAE term and its two parts.
LOSS_TERMS = ("loss", "loss_l2", "loss_clustering", "loss_separating", "loss_vae",
              "loss_reconstruction", "loss_kl")
_LOSS_COLUMNS = 4


def _readable(fig: figure_lib.Figure) -> figure_lib.Figure:
  """Sets every text of `fig` to the report's sizes (tick labels and legends MIN_FONT_PT)."""
  for ax in fig.axes:
    ax.tick_params(labelsize=MIN_FONT_PT)
    for axis in (ax.xaxis, ax.yaxis):
      axis.label.set_fontsize(LABEL_PT)
      axis.get_offset_text().set_fontsize(MIN_FONT_PT)
    ax.title.set_fontsize(TITLE_PT)
    legend = ax.get_legend()
    if legend is not None:
      for text in legend.get_texts():
        text.set_fontsize(MIN_FONT_PT)
  for legend in fig.legends:
    for text in legend.get_texts():
      text.set_fontsize(MIN_FONT_PT)
  if fig._suptitle is not None:  # pylint: disable=protected-access
    fig._suptitle.set_fontsize(TITLE_PT)  # pylint: disable=protected-access
  return fig


def _legend_below(fig: figure_lib.Figure, ax) -> figure_lib.Figure:
  """The axes' legend under the plot (never over the curves), the figure taller to hold it."""
  handles, labels = ax.get_legend_handles_labels()
  width, height = fig.get_size_inches()
  fig.set_size_inches(width, height + 0.25 * len(labels))  # One entry a line.
  fig.legend(handles, labels, loc="outside lower center", fontsize=MIN_FONT_PT, frameon=False)
  return fig


def _axes(title: str, xlabel: str, ylabel: str, size=_SIZE):
  fig = figure_lib.Figure(figsize=size, dpi=DISPLAY_DPI, layout="constrained")
  ax = fig.add_subplot()
  ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
  ax.grid(alpha=0.3)
  return fig, ax


def _color(c: curves_lib.Curves, colors: Optional[Mapping[str, str]]) -> Dict[str, str]:
  """The line colour of `c.label` in `colors` (the same method keeps its colour in every group)."""
  return {"color": colors[c.label]} if colors and c.label in colors else {}


def _legend_label(c: curves_lib.Curves) -> str:
  return f"{c.label} ({tables.map_label(c.topk)} {c.map:.3f})"


def precision_recall(group: Sequence[curves_lib.Curves],
                     colors: Optional[Mapping[str, str]] = None) -> figure_lib.Figure:
  """Precision against recall of Hamming-ball retrieval, one point per radius 0..k."""
  fig, ax = _axes(f"Precision-recall, {group[0].bits} bits", "recall",
                  "precision")
  for c in group:
    ax.plot(c.recall_R, c.precision_R, marker=".", label=_legend_label(c), **_color(c, colors))
  ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
  return _readable(_legend_below(fig, ax))


def precision_at_k(group: Sequence[curves_lib.Curves],
                   colors: Optional[Mapping[str, str]] = None) -> figure_lib.Figure:
  """Precision of the top k against k."""
  fig, ax = _axes(f"Precision@k, {group[0].bits} bits", "k (top-ranked items)", "precision")
  for c in group:
    ax.plot(c.ks_P, c.precision_at_k_P, label=_legend_label(c), **_color(c, colors))
  ax.set(ylim=(0, 1.02))
  return _readable(_legend_below(fig, ax))


def precision_within_radius(group: Sequence[curves_lib.Curves],
                            colors: Optional[Mapping[str, str]] = None) -> figure_lib.Figure:
  """Precision of the items within Hamming distance r against r."""
  fig, ax = _axes(f"Precision within radius r, {group[0].bits} bits", "radius r",
                  "precision")
  for c in group:
    ax.plot(np.arange(c.bits + 1), c.precision_R, marker=".", label=_legend_label(c),
            **_color(c, colors))
  ax.axvline(2, color="gray", linestyle=":", linewidth=1)
  ax.set(ylim=(0, 1.02))
  return _readable(_legend_below(fig, ax))


def losses(scalars: Dict[str, events.Series]) -> figure_lib.Figure:
  """One panel per loss term, averaged over each logging interval, against the step."""
  terms = [t for t in LOSS_TERMS if t in scalars]
  columns = min(len(terms), _LOSS_COLUMNS)
  rows = -(-len(terms) // columns)
  fig = figure_lib.Figure(figsize=(2.75 * columns, 2.5 * rows + 0.5), dpi=DISPLAY_DPI,
                          layout="constrained")
  for i, term in enumerate(terms):
    ax = fig.add_subplot(rows, columns, i + 1)
    steps, values = scalars[term]
    ax.plot(steps, values, marker=".")
    ax.set(title=term, xlabel="step")
    ax.grid(alpha=0.3)
  fig.suptitle("Loss terms per logging interval")
  return _readable(fig)


def threshold(steps: np.ndarray, values: np.ndarray, steps_per_epoch: int) -> figure_lib.Figure:
  """The similarity threshold s_t estimated at the start of each epoch."""
  fig, ax = _axes("Similarity threshold s_t per epoch", "epoch", "s_t")
  ax.plot(steps // max(steps_per_epoch, 1), values, marker="o")
  return _readable(fig)


# Scalars of `epoch_state.changes`, logged from the second epoch on, with their legends.
CHANGE_TERMS = {"assignments_changed": "images in another cluster",
                "neighbours_replaced": "neighbours replaced (mean per image)",
                "neighbour_sets_changed": "images whose neighbour set changed"}


def epoch_changes(scalars, steps_per_epoch: int) -> figure_lib.Figure:
  """How far the clusters and the neighbour targets moved at each epoch, as fractions."""
  fig, ax = _axes("Adaptive state: what changed since the last epoch", "epoch", "fraction")
  for tag, label in CHANGE_TERMS.items():
    if tag in scalars:
      steps, values = scalars[tag]
      ax.plot(steps // max(steps_per_epoch, 1), values, marker="o", label=label)
  return _readable(_legend_below(fig, ax))


def cluster_sizes(epochs: np.ndarray, sizes_ExN: np.ndarray) -> figure_lib.Figure:
  """Images per k-means cluster (rows) at the start of each epoch (columns), as a heat map."""
  fig, ax = _axes("Cluster sizes per epoch", "epoch", "cluster j")
  image = ax.imshow(sizes_ExN.T, aspect="auto", origin="lower", cmap="viridis",
                    extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, sizes_ExN.shape[1] - 0.5))
  ax.grid(False)
  fig.colorbar(image, ax=ax, label="images in the cluster")
  return _readable(fig)


def smallest_cluster(epochs: np.ndarray, smallest: np.ndarray) -> figure_lib.Figure:
  """The size of the smallest k-means cluster at the start of each epoch."""
  fig, ax = _axes("Smallest cluster size per epoch", "epoch", "images")
  ax.plot(epochs, smallest, marker="o")
  return _readable(fig)


def bit_balance(fractions_K: np.ndarray, title: str) -> figure_lib.Figure:
  """Fraction of +1 per bit; 0.5 (dashed) is a balanced bit."""
  fig, ax = _axes(title, "bit", "fraction of +1")
  ax.bar(np.arange(len(fractions_K)), fractions_K, color="tab:blue")
  ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
  ax.set(ylim=(0, 1))
  return _readable(fig)


def display_size(fig: figure_lib.Figure) -> Tuple[int, int]:
  """(width, height) in CSS pixels at which the page shows `fig` (DISPLAY_DPI per inch)."""
  width, height = fig.get_size_inches()
  return round(width * DISPLAY_DPI), round(height * DISPLAY_DPI)


def save(fig: figure_lib.Figure, path: str) -> Tuple[int, int]:
  """Writes `fig` as a PNG of SAVE_DPI pixels per inch; returns its display_size."""
  fig.savefig(path, dpi=SAVE_DPI)
  return display_size(fig)
