"""The retrieval gallery: fixed queries with their top neighbours as thumbnails.

Queries are drawn once from `numpy.random.default_rng(SEED)`, so every report of the same splits
shows the same ones. Neighbours are the Hamming ranking of the database (ties by database order,
as in `ucsh_jax.metrics`); a neighbour is relevant when it shares a label with the query.
"""

import dataclasses
import html
import os
from typing import List

import numpy as np

from ucsh_jax import metrics
from ucsh_jax import thumbnails
from ucsh_jax.report import runs

SEED = 0
NUM_QUERIES = 10
NUM_NEIGHBOURS = 10
THUMBNAIL_SIZE = 64
FOLDER = "gallery"


@dataclasses.dataclass(frozen=True)
class Row:
  """One query and its ranked neighbours; ids are positions in the data source.

  Attributes:
    query_id: the query's id.
    neighbour_ids_K, distances_K: ranked neighbour ids and their Hamming distances.
    relevant_K: whether each neighbour shares a label with the query.
  """
  query_id: int
  neighbour_ids_K: np.ndarray
  distances_K: np.ndarray
  relevant_K: np.ndarray


def shares_label(query_label, database_labels_KxC: np.ndarray) -> np.ndarray:
  """(K,) bool: database rows with the query's class, or (multi-hot) any label in common."""
  database_labels_KxC = np.asarray(database_labels_KxC)
  if database_labels_KxC.ndim == 1:
    return database_labels_KxC == query_label
  return np.any((database_labels_KxC != 0) & (np.asarray(query_label)[None, :] != 0), axis=1)


def rows(entry: runs.MethodCodes, *, num_queries: int = NUM_QUERIES,
         num_neighbours: int = NUM_NEIGHBOURS, seed: int = SEED) -> List[Row]:
  """The gallery rows of `entry`'s codes: `num_queries` queries in query order."""
  codes = entry.codes
  num_query, num_db = len(codes["query_codes"]), len(codes["database_codes"])
  chosen = np.sort(np.random.default_rng(seed).choice(num_query, min(num_queries, num_query),
                                                      replace=False))
  top_QxK, dist_QxK = metrics.hamming_top_k(codes["query_codes"][chosen],
                                            codes["database_codes"],
                                            min(num_neighbours, num_db))
  return [Row(query_id=int(entry.query_ids[q]), neighbour_ids_K=entry.database_ids[top],
              distances_K=dist,
              relevant_K=shares_label(codes["query_labels"][q], codes["database_labels"][top]))
          for q, top, dist in zip(chosen, top_QxK, dist_QxK)]


def _thumbnail(source, item: int, out_dir: str) -> str:
  """Writes item's thumbnail once; returns its path relative to the report folder."""
  relative = f"{FOLDER}/{item}.png"
  path = os.path.join(out_dir, relative)
  if not os.path.exists(path):
    thumbnails.thumbnail(source, item, size=THUMBNAIL_SIZE).save(path)
  return relative


def _figure(css_class: str, caption: str, image: str, attributes: str = "") -> str:
  img = f'<img src="{html.escape(image)}" alt="item">' if image else ""
  return (f'<figure class="{css_class}"{attributes}>{img}'
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render(gallery_rows: List[Row], source, out_dir: str) -> str:
  """The gallery's HTML; writes the thumbnails under `out_dir`/gallery/.

  For a feature source (no pixels) the page says so and lists ids and distances instead.
  """
  pixels = thumbnails.has_pixels(source)
  parts = []
  if pixels:
    os.makedirs(os.path.join(out_dir, FOLDER), exist_ok=True)
  else:
    parts.append('<p class="no-images">This data set holds feature vectors, not images: there '
                 "are no images to show. Each row lists the query's id and its neighbours' "
                 "ids with their Hamming distances.</p>")
  for row in gallery_rows:
    image = _thumbnail(source, row.query_id, out_dir) if pixels else ""
    cells = [_figure("query", f"query {row.query_id}", image)]
    for item, dist, rel in zip(row.neighbour_ids_K, row.distances_K, row.relevant_K):
      image = _thumbnail(source, int(item), out_dir) if pixels else ""
      caption = f"d = {int(dist)}" if pixels else f"#{int(item)}: d = {int(dist)}"
      cells.append(_figure(
          "hit relevant" if rel else "hit irrelevant", caption, image,
          f' data-item="{int(item)}" data-distance="{int(dist)}" data-relevant="{int(rel)}"'))
    parts.append(f'<div class="gallery-row" data-query="{row.query_id}">{"".join(cells)}</div>')
  return "\n".join(parts)
