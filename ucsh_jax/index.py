"""An exact Hamming index over bit-packed hash codes, with save/load and faiss export.

Codes are stored bit-packed, `bits / 8` bytes per item (`np.packbits(codes > 0)`, the layout
faiss's binary indexes use), with one int64 id per item (by default its position in the data
set). The code length must be a multiple of 8; any other length is refused with a UserError
(faiss refuses it too), so that a saved index and its faiss export always hold the same bits.

Search is exact and ranks by (Hamming distance, id): equal distances come back in increasing id
order, as in `ucsh_jax.metrics` (where the id is the database index). The index keeps its items
sorted by id, so that this order is the storage order. The scan takes blocks of up to 256
queries (on one thread per CPU core) over chunks of the database: one jitted XLA kernel on the
CPU computes XOR, popcount and the comparison with each query's running threshold in one pass,
and only the items at or below it are kept. The threshold starts at the k-th smallest distance
among the first items and drops to the k-th smallest of the candidates found so far (a counting
selection on the distance range 0..bits), so that later chunks yield only items that can still
rank. The kernel compiles once per block shape; memory is bounded by the chunk sizes, plus a
word-major copy of the codes that the first search builds.

The file format (`save`/`load`), version 1, little-endian:

  bytes 0..7    magic b"UCSHHAM\\0"
  bytes 8..11   uint32 format version
  bytes 12..15  uint32 bits
  bytes 16..23  uint64 ntotal
  bytes 24..27  uint32 CRC-32 of the payload
  bytes 28..31  zero
  payload       ntotal * bits / 8 bytes of packed codes, then ntotal int64 ids

Example:

  index = HammingIndex.from_codes(database_codes, ids=database_ids)  # (n, 64) +-1 codes
  distances, ids = index.search(query_codes, k=10)                   # (q, 10) each
  index.save("database.index"); index = HammingIndex.load("database.index", bits=64)
"""

import concurrent.futures
import functools
import os
import struct
import zlib
from typing import Any, Callable, List, Optional, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ucsh_jax import errors

MAGIC = b"UCSHHAM\0"
VERSION = 1
_HEADER = struct.Struct("<8sIIQII")

# Queries per block and (queries x database items) per kernel call of the scan: the call's
# mask stays in the CPU's cache. Blocks of queries run on up to _THREADS threads (the kernel
# and NumPy's loops release the GIL).
_QUERY_BLOCK = 256
_BLOCK_SIZE = 1 << 18
_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _check_bits(bits) -> int:
  if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 \
      or bits % 8:
    raise errors.UserError(
        f"code length must be a positive multiple of 8 bits, got {bits!r}",
        hint="pad the codes to a multiple of 8 bits or train with such a code length")
  return int(bits)


def pack_codes(codes, bits: int, name: str = "codes") -> np.ndarray:
  """+-1 codes -> packed bits.

  Args:
    codes: (n, bits) +-1 codes of any int or float dtype.
    bits: the expected code length.
    name: the argument's name for error messages.

  Returns:
    (n, bits / 8) uint8, bit set where the code is +1 (`np.packbits(codes > 0, axis=1)`).
  """
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] != bits:
    raise errors.UserError(f"{name} must be (n, {bits}) codes, got shape {codes.shape}")
  if not np.all((codes == 1) | (codes == -1)):
    raise errors.UserError(f"{name} must hold only +1 and -1 entries")
  return np.packbits(codes > 0, axis=1)


def _check_packed(packed, bits: int, name: str = "packed") -> np.ndarray:
  packed = np.asarray(packed)
  if packed.ndim != 2 or packed.shape[1] != bits // 8 or packed.dtype != np.uint8:
    raise errors.UserError(
        f"{name} must be (n, {bits // 8}) uint8 packed {bits}-bit codes, got "
        f"{packed.dtype} {packed.shape}")
  return np.ascontiguousarray(packed)


def _words(packed: np.ndarray) -> np.ndarray:
  """(n, nbytes) uint8 -> (n, w) words of the widest of uint32/16/8 that divides nbytes."""
  size = next(size for size in (4, 2, 1) if packed.shape[1] % size == 0)
  return np.ascontiguousarray(packed).view(f"u{size}")


@functools.partial(jax.jit, static_argnames="dtype")
def _distance_kernel(query_words, db_words, dtype):
  """(b, w) and (w, c) words -> (b, c) Hamming distances of `dtype`, in one fused pass."""
  dist = jnp.zeros((query_words.shape[0], db_words.shape[1]), dtype)
  for w in range(query_words.shape[1]):
    xor = query_words[:, w, None] ^ db_words[w][None, :]
    dist = dist + lax.population_count(xor).astype(dtype)
  return dist


@jax.jit
def _within_kernel(query_words, db_words, limit):
  """(b, w) and (w, c) words, (b,) limits -> (b, c) bool: Hamming distance < limit.

  `limit`'s dtype must hold bits + 1; the distances are summed in it.
  """
  return _distance_kernel(query_words, db_words, limit.dtype) < limit[:, None]


def _pair_distances(query_words: np.ndarray, db_words: np.ndarray) -> np.ndarray:
  """(m, w) and (m, w) words -> (m,) int64 Hamming distances of the pairs."""
  return np.bitwise_count(query_words ^ db_words).sum(axis=1, dtype=np.int64)


class _Scan:
  """A block of queries scanned over the database in chunks of a fixed shape.

  The block is padded to a power of two rows and the last chunk to the full chunk, so the
  kernel compiles once per (rows, chunk, words) shape.
  """

  def __init__(self, query_words: np.ndarray, db_words: np.ndarray, db_word_major: np.ndarray,
               bits: int):
    self.num_queries, self.num_db, self.bits = len(query_words), len(db_words), bits
    rows = 1 << (self.num_queries - 1).bit_length()
    self.chunk = max(1, min(_BLOCK_SIZE // rows, 1 << (self.num_db - 1).bit_length()))
    self.query_words, self.db_words, self.db_word_major = query_words, db_words, db_word_major
    padded = np.zeros((rows, query_words.shape[1]), query_words.dtype)
    padded[:self.num_queries] = query_words
    self.device_queries = jax.device_put(padded, jax.devices("cpu")[0])
    self.limit = np.zeros(rows, np.uint8 if bits < 256 else np.uint16)

  def _chunk_words(self, start: int) -> np.ndarray:
    """(w, chunk) database words from `start` (word-major), zero padded past the end."""
    words = self.db_word_major[:, start:start + self.chunk]
    if words.shape[1] == self.chunk:
      return words
    out = np.zeros((len(words), self.chunk), words.dtype)
    out[:, :words.shape[1]] = words
    return out

  def _found(self, start: int, flat: np.ndarray
             ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, positions, distances) of the flat (rows, chunk) indices found in a chunk."""
    rows, pos = np.divmod(flat, self.chunk)
    pos += start
    if start + self.chunk > self.num_db:
      rows, pos = rows[pos < self.num_db], pos[pos < self.num_db]
    return rows, pos, _pair_distances(self.query_words[rows], self.db_words[pos])

  def first_candidates(self, k: int
                       ) -> Tuple[np.ndarray, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first chunk: thresholds and the candidates at or below them.

    Returns:
      (num_queries,) int64 thresholds: the k-th smallest distance of each query among the
      first max(4096, 16 k) items (an upper bound of the k-th smallest over the whole
      database; `bits` where the database has fewer than k items), and the chunk's
      candidates as `candidates` returns them.
    """
    size = min(self.chunk, self.num_db, max(4096, 16 * k))
    dist = np.asarray(_distance_kernel(self.device_queries, self._chunk_words(0),
                                       self.limit.dtype))[:self.num_queries]
    rows = np.repeat(np.arange(self.num_queries), size)
    thresh = _kth_distance(rows, dist[:, :size].ravel().astype(np.int64), self.num_queries, k,
                           self.bits)
    flat = np.flatnonzero(dist <= thresh[:, None].astype(dist.dtype))
    return thresh, self._found(0, flat)

  def candidates(self, start: int, thresh: np.ndarray
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, positions, distances), int64, of the chunk's items at distance <= thresh.

    Args:
      start: the chunk's first database position.
      thresh: (num_queries,) per-query maximum distance.

    Returns:
      The items found in (row, position) order: row in the block, database position and
      Hamming distance of each.
    """
    self.limit[:self.num_queries] = thresh + 1
    mask = np.asarray(_within_kernel(self.device_queries, self._chunk_words(start),
                                     self.limit))
    return self._found(start, np.flatnonzero(mask))


def _kth_distance(rows: np.ndarray, dist: np.ndarray, num_rows: int, k: int,
                  bits: int) -> np.ndarray:
  """Per row, the k-th smallest of the candidate distances (bits where fewer than k).

  Args:
    rows: (m,) row of each candidate, in 0..num_rows - 1.
    dist: (m,) their distances, in 0..bits.
    num_rows, k, bits: sizes.

  Returns:
    (num_rows,) int64 thresholds.
  """
  size = bits + 1
  hist = np.bincount(rows * size + dist, minlength=num_rows * size).reshape(num_rows, size)
  enough = np.cumsum(hist, axis=1) >= k
  return np.where(enough[:, -1], np.argmax(enough, axis=1), bits)


def _block_top_k(query_words: np.ndarray, db_words: np.ndarray, db_word_major: np.ndarray,
                 k: int, bits: int) -> Tuple[np.ndarray, np.ndarray]:
  """Exact top-k of a block of queries over the whole database.

  Each query's threshold starts at its k-th smallest distance in the first chunk and drops
  to the k-th smallest among the candidates found so far, so that each chunk yields only the
  items that can still rank.

  Args:
    query_words: (b, w) query words.
    db_words: (n, w) database words, n >= k.
    db_word_major: the same as (w, n).
    k: neighbours per query.
    bits: code length.

  Returns:
    (b, k) int32 distances and (b, k) int64 database positions, by (distance, position).
  """
  scan = _Scan(query_words, db_words, db_word_major, bits)
  b, n = scan.num_queries, scan.num_db
  kept = [np.empty(0, np.int64)] * 3  # rows, positions, distances of the candidates
  thresh, first = scan.first_candidates(k)
  pending, num_pending = [first], len(first[0])
  for start in range(0, n, scan.chunk):
    if start:
      pending.append(scan.candidates(start, thresh))
      num_pending += len(pending[-1][0])
    if num_pending > 2 * b * k or start + scan.chunk >= n:
      kept = [np.concatenate(parts) for parts in zip(kept, *pending)]
      pending, num_pending = [], 0
      thresh = _kth_distance(kept[0], kept[2], b, k, bits)
      keep = kept[2] <= thresh[kept[0]]
      kept = [x[keep] for x in kept]
  rows, pos, dist = kept
  order = _ranked(rows, dist, pos, bits, n)
  counts = np.bincount(rows, minlength=b)
  row_start = np.cumsum(counts) - counts
  take = order[row_start[:, None] + np.arange(k)]
  return dist[take].astype(np.int32), pos[take]


def _block_range(query_words: np.ndarray, db_words: np.ndarray, db_word_major: np.ndarray,
                 radius: int, bits: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All database items within `radius` of a block of queries.

  Args:
    query_words: (b, w) query words.
    db_words: (n, w) database words.
    db_word_major: the same as (w, n).
    radius: maximum distance (inclusive).
    bits: code length.

  Returns:
    (b,) int64 counts of items found per query, then the (m,) int64 distances and database
    positions of the m items found, by (query, distance, position).
  """
  scan = _Scan(query_words, db_words, db_word_major, bits)
  thresh = np.full(scan.num_queries, min(radius, bits), np.int64)
  rows, pos, dist = (np.concatenate(parts) for parts in zip(
      *[scan.candidates(start, thresh) for start in range(0, scan.num_db, scan.chunk)]))
  order = _ranked(rows, dist, pos, bits, scan.num_db)
  return np.bincount(rows, minlength=scan.num_queries), dist[order], pos[order]


def _ranked(rows: np.ndarray, dist: np.ndarray, pos: np.ndarray, bits: int,
            n: int) -> np.ndarray:
  """The order of (m,) candidates by (row, distance, position), positions below n."""
  if (int(rows.max(initial=0)) + 1) * (bits + 1) * n < 2**62:
    return np.argsort((rows * (bits + 1) + dist) * n + pos)
  return np.lexsort((pos, dist, rows))


def _blocks(num_queries: int) -> List[slice]:
  return [slice(start, min(start + _QUERY_BLOCK, num_queries))
          for start in range(0, num_queries, _QUERY_BLOCK)]


def _map_blocks(fn: Callable[[slice], Any], num_queries: int) -> List[Any]:
  """[fn(block) for block in _blocks(num_queries)], on up to _THREADS threads."""
  blocks = _blocks(num_queries)
  if len(blocks) <= 1 or _THREADS <= 1:
    return [fn(block) for block in blocks]
  with concurrent.futures.ThreadPoolExecutor(min(_THREADS, len(blocks))) as pool:
    return list(pool.map(fn, blocks))


class HammingIndex:
  """Exact Hamming search over bit-packed codes with int64 ids.

  Attributes:
    bits: code length, a multiple of 8.
    ntotal: number of items.
    packed: (ntotal, bits / 8) uint8 codes, in id order (read-only; use add).
    ids: (ntotal,) int64 ids, increasing (read-only).
  """

  def __init__(self, bits: int):
    self.bits = _check_bits(bits)
    self._set(np.zeros((0, self.bits // 8), np.uint8), np.zeros(0, np.int64))

  def _set(self, packed: np.ndarray, ids: np.ndarray) -> None:
    self._packed, self._ids = packed, ids
    self._word_major = None  # (w, ntotal) words, built by the first search.

  @property
  def packed(self) -> np.ndarray:
    return self._packed

  @property
  def ids(self) -> np.ndarray:
    return self._ids

  def _scan_words(self) -> Tuple[np.ndarray, np.ndarray]:
    """The database as (ntotal, w) words and, cached, as (w, ntotal) words."""
    words = _words(self._packed)
    if self._word_major is None:
      self._word_major = np.ascontiguousarray(words.T)
    return words, self._word_major

  @property
  def ntotal(self) -> int:
    return len(self.ids)

  @classmethod
  def from_codes(cls, codes, ids=None) -> "HammingIndex":
    """An index of (n, bits) +-1 codes; ids (n,) default to 0..n-1."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
      raise errors.UserError(f"codes must be (n, bits) +-1 codes, got shape {codes.shape}")
    index = cls(codes.shape[1])
    index.add(codes, ids)
    return index

  @classmethod
  def from_packed(cls, packed, bits: int, ids=None) -> "HammingIndex":
    """An index of (n, bits / 8) uint8 packed codes; ids (n,) default to 0..n-1."""
    index = cls(bits)
    index.add_packed(packed, ids)
    return index

  def add(self, codes, ids=None) -> None:
    """Adds (n, bits) +-1 codes; ids (n,) default to ntotal..ntotal + n - 1."""
    self.add_packed(pack_codes(codes, self.bits), ids)

  def add_packed(self, packed, ids=None) -> None:
    """Adds (n, bits / 8) uint8 packed codes with ids like `add`.

    Ids must be non-negative and distinct from each other and from those already added.
    """
    packed = _check_packed(packed, self.bits)
    if ids is None:
      start = int(self.ids[-1]) + 1 if self.ntotal else 0
      ids = np.arange(start, start + len(packed), dtype=np.int64)
    ids = np.asarray(ids)
    if ids.shape != (len(packed),) or not np.issubdtype(ids.dtype, np.integer):
      raise errors.UserError(
          f"ids must be ({len(packed)},) integers, one per code, got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    if len(ids) and ids.min() < 0:
      raise errors.UserError(f"ids must be non-negative, got {ids.min()}")
    packed = np.concatenate([self.packed, packed])
    ids = np.concatenate([self.ids, ids])
    if np.any(np.diff(ids) <= 0):
      order = np.argsort(ids, kind="stable")
      packed, ids = packed[order], ids[order]
      repeated = ids[1:][np.diff(ids) == 0]
      if len(repeated):
        raise errors.UserError(f"ids must be distinct, {repeated[0]} is given twice")
    self._set(packed, ids)

  def search(self, query_codes, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The k nearest items of each query, exact, ties broken by increasing id.

    Args:
      query_codes: (q, bits) +-1 codes.
      k: neighbours per query, >= 1. Where k > ntotal the rows are padded with
        distance -1 and id -1 (as faiss pads), after all ntotal items.

    Returns:
      (distances, ids): (q, k) int32 Hamming distances, increasing along each row, and
      (q, k) int64 ids.
    """
    return self.search_packed(pack_codes(query_codes, self.bits, "query_codes"), k)

  def search_packed(self, packed_queries, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """`search` for (q, bits / 8) uint8 packed queries."""
    packed_queries = _check_packed(packed_queries, self.bits, "packed_queries")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise errors.UserError(f"k must be a positive integer, got {k!r}")
    num_queries, found = len(packed_queries), min(int(k), self.ntotal)
    distances = np.full((num_queries, k), -1, np.int32)
    ids = np.full((num_queries, k), -1, np.int64)
    if found == 0:
      return distances, ids
    query_words, (db_words, db_word_major) = _words(packed_queries), self._scan_words()
    results = _map_blocks(lambda block: _block_top_k(
        query_words[block], db_words, db_word_major, found, self.bits), num_queries)
    for block, (dist, pos) in zip(_blocks(num_queries), results):
      distances[block, :found], ids[block, :found] = dist, self.ids[pos]
    return distances, ids

  def range_search(self, query_codes, radius: int
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All items within Hamming distance `radius` (inclusive) of each query.

    Unlike faiss's binary range_search (distance < radius), the radius is included, as in
    `metrics.precision_within_radius`.

    Args:
      query_codes: (q, bits) +-1 codes.
      radius: maximum distance, >= 0.

    Returns:
      (lims, distances, ids) as faiss returns them: query i's results are
      distances[lims[i]:lims[i + 1]] (int32) and ids[lims[i]:lims[i + 1]] (int64), by
      (distance, id); lims is (q + 1,) int64.
    """
    packed_queries = pack_codes(query_codes, self.bits, "query_codes")
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
      raise errors.UserError(f"radius must be a non-negative integer, got {radius!r}")
    num_queries = len(packed_queries)
    if not self.ntotal:
      return np.zeros(num_queries + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
    query_words, (db_words, db_word_major) = _words(packed_queries), self._scan_words()
    results = _map_blocks(lambda block: _block_range(
        query_words[block], db_words, db_word_major, int(radius), self.bits), num_queries)
    none = (np.empty(0, np.int64),) * 3  # For no queries.
    counts, distances, positions = (np.concatenate(parts) for parts in zip(none, *results))
    lims = np.concatenate([[0], np.cumsum(counts)])
    return lims, distances.astype(np.int32), self.ids[positions]

  def save(self, path: str) -> None:
    """Writes the index to one file (format above), atomically."""
    payload = [np.ascontiguousarray(self.packed), self.ids.astype("<i8")]
    crc = 0
    for part in payload:
      crc = zlib.crc32(part, crc)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(_HEADER.pack(MAGIC, VERSION, self.bits, self.ntotal, crc, 0))
      for part in payload:
        f.write(part.tobytes())
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str, bits: Optional[int] = None) -> "HammingIndex":
    """Reads a file written by `save`.

    Args:
      path: the file.
      bits: the code length the caller expects; None accepts any.

    Raises:
      errors.UserError: the file is missing, not an index, of another format version or
        code length, truncated or corrupt; the message names the file and the problem.
    """
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise errors.UserError(f"cannot read the Hamming index {path}: {e.strerror}") from e
    if not data.startswith(MAGIC):
      raise errors.UserError(f"{path} is not a Hamming index file (no {MAGIC[:7]!r} header)")
    if len(data) < _HEADER.size:
      raise errors.UserError(f"{path} is truncated: {len(data)} bytes, shorter than the header")
    _, version, file_bits, ntotal, crc, _ = _HEADER.unpack_from(data)
    if version != VERSION:
      raise errors.UserError(
          f"{path} is a Hamming index of format version {version}; this code reads "
          f"version {VERSION}", hint="rebuild it with --mode=encode")
    if file_bits == 0 or file_bits % 8:
      raise errors.UserError(f"{path} is corrupt: invalid code length {file_bits}")
    if bits is not None and file_bits != bits:
      raise errors.UserError(
          f"{path} holds {file_bits}-bit codes, expected {bits}-bit codes",
          hint="use the index written by the same run")
    nbytes = file_bits // 8
    expected = _HEADER.size + ntotal * (nbytes + 8)
    if len(data) != expected:
      what = "truncated" if len(data) < expected else "corrupt (trailing data)"
      raise errors.UserError(
          f"{path} is {what}: {len(data)} bytes where the header announces {expected}")
    payload = memoryview(data)[_HEADER.size:]
    if zlib.crc32(payload) != crc:
      raise errors.UserError(f"{path} is corrupt: checksum mismatch")
    index = cls(file_bits)
    index._set(np.frombuffer(payload, np.uint8, ntotal * nbytes).reshape(ntotal, nbytes),
               np.frombuffer(payload, "<i8", ntotal, ntotal * nbytes).astype(np.int64))
    return index

  def to_faiss(self, kind: str = "flat", **params):
    """The same items in a faiss binary index, searched with the same packed queries.

    Args:
      kind: "flat" (exact `IndexBinaryFlat`, in an `IndexBinaryIDMap` for the ids), "hash"
        (`IndexBinaryHash`) or "ivf" (`IndexBinaryIVF` over an `IndexBinaryFlat` quantizer).
      **params: for "hash", `b` (bits of the code prefix used as the hash key, default
        min(bits, 16)) and `nflip` (bits flipped when probing at search, default 2); for
        "ivf", `nlist` (lists, default min(ntotal / 39, sqrt(ntotal)), at least 1; trained on
        at most 64 codes per list, drawn with a fixed seed) and `nprobe` (lists probed at
        search, default 16). "hash" and "ivf" are approximate.

    Returns:
      The faiss index; query it with `np.packbits(query_codes > 0, axis=1)`. Its ids are
      this index's ids.
    """
    import faiss  # pylint: disable=g-import-not-at-top

    def take(name, default):
      return int(params.pop(name, default))

    if kind == "flat":
      index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(self.bits))
    elif kind == "hash":
      index = faiss.IndexBinaryHash(self.bits, take("b", min(self.bits, 16)))
      index.nflip = take("nflip", 2)
    elif kind == "ivf":
      if not self.ntotal:
        raise errors.UserError("an IVF index is trained on the codes: add codes first")
      nlist = take("nlist", max(1, min(self.ntotal // 39, int(np.sqrt(self.ntotal)))))
      index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.bits), self.bits, nlist)
      index.nprobe = take("nprobe", 16)
      sample = np.random.default_rng(0).permutation(self.ntotal)[:64 * nlist]
      index.train(self.packed[np.sort(sample)])
    else:
      raise errors.UserError(f"unknown faiss index kind {kind!r}; use flat, hash or ivf")
    if params:
      raise errors.UserError(f"unknown parameters for a faiss {kind} index: {sorted(params)}")
    index.add_with_ids(self.packed, self.ids)
    return index
