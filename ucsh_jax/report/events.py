"""TensorBoard scalars of a run, read from its event files without TensorFlow.

An event file is a TFRecord file: each record is a little-endian uint64 length, the masked
CRC-32C of those 8 bytes, the payload (a serialized `tensorboard.Event` protobuf) and the masked
CRC-32C of the payload. tensorboardX ships the protobuf classes and the CRC; a record whose
checksum does not match, or a file cut short by a killed run, ends that file's reading.
"""

import glob
import os
import struct
from typing import Dict, Iterator, Tuple

import numpy as np
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

Series = Tuple[np.ndarray, np.ndarray]  # (steps int64 (n,), values float64 (n,)), by step.


def records(path: str) -> Iterator[bytes]:
  """The intact payloads of the TFRecord file `path`, in file order."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
      if masked_crc32c(length_bytes) != length_crc:
        return
      (length,) = struct.unpack("<Q", length_bytes)
      payload, footer = f.read(length), f.read(4)
      if len(payload) < length or len(footer) < 4:
        return
      if masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
        return
      yield payload


def _scalar(value) -> float:
  if value.HasField("simple_value"):
    return float(value.simple_value)
  return float(value.tensor.float_val[0]) if value.tensor.float_val else float("nan")


def read_scalars(workdir: str) -> Dict[str, Series]:
  """{tag: (steps, values)} of every scalar in `workdir`'s event files (not its subfolders).

  When a resumed run logs a step again, the value written last (by wall time) wins. Each
  series is sorted by step.
  """
  latest: Dict[str, Dict[int, Tuple[float, float]]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for payload in records(path):
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        by_step = latest.setdefault(value.tag, {})
        previous = by_step.get(event.step)
        if previous is None or event.wall_time >= previous[0]:
          by_step[event.step] = (event.wall_time, _scalar(value))
  series = {}
  for tag, by_step in latest.items():
    steps = np.array(sorted(by_step), np.int64)
    series[tag] = steps, np.array([by_step[s][1] for s in steps], np.float64)
  return series
