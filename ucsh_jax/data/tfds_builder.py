"""What the project's tfds builders share: the manual directory and what to do with bad images.

The builders prepare without TensorFlow: they hand tfds encoded image bytes (PNG made with PIL, or
the original JPEG bytes), never numpy image arrays, and are prepared with
`file_format="array_record"`; `tfds.data_source` then reads them without TensorFlow.
tensorflow-datasets 4.9.10 imports `importlib_resources` when it prepares a builder that lives in a
package but declares it only for Python < 3.9 (tfds issue #11212), so it must be installed.

Prepared data are tied to their source by content: preparing writes `SOURCE_FILE` (the source's
fingerprint, see `fingerprint.py`, and where it came from) next to the records, and
`check_source` refuses prepared data whose source is not the one the config names now.
"""

from typing import Dict, Iterator, Optional, Sequence, Tuple

import json

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ucsh_jax import errors
from ucsh_jax.data import fingerprint as fingerprint_lib
from ucsh_jax.data import images

SOURCE_FILE = "ucsh_source.json"  # {"fingerprint": ..., "origin": file, folder or URL}


class ManualDirBuilder(tfds.core.GeneratorBasedBuilder):
  """A GeneratorBasedBuilder that reads files from a manual directory.

  Args (besides tfds's own, e.g. `data_dir`, `file_format`):
    manual_dir: folder holding the dataset's files; None or '' means tfds's default
      `<data_dir>/downloads/manual`.
    skip_corrupt: leave out unreadable images (and log how many) instead of raising an error that
      names the first one.
  """

  def __init__(self, *, manual_dir: Optional[str] = None, skip_corrupt: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.manual_path = (epath.Path(manual_dir) if manual_dir
                        else self.data_dir_root / "downloads" / "manual")
    self.skip_corrupt = skip_corrupt

  def current_source(self) -> Optional[Dict[str, str]]:
    """{"fingerprint", "origin"} of the source this builder would prepare from now, or None
    where that source is not here to compare (e.g. a download)."""
    raise NotImplementedError

  def _record_source(self, source: Dict[str, str]) -> None:
    """Writes SOURCE_FILE into the folder being prepared (tfds renames it into place with the
    records, so prepared data always carry it)."""
    (self.data_path / SOURCE_FILE).write_text(json.dumps(source, sort_keys=True))

  def recorded_source(self) -> Optional[Dict[str, str]]:
    """The prepared data's SOURCE_FILE, or None without one."""
    path = self.data_path / SOURCE_FILE
    return json.loads(path.read_text()) if path.exists() else None

  def check_source(self) -> Dict[str, str]:
    """The prepared data's recorded source; a UserError unless it is the source the config
    names now (compared by fingerprint, where that source is here), naming both and the folder
    to remove."""
    folder = self.data_path
    recorded = self.recorded_source()
    if recorded is None:
      raise errors.UserError(
          f"{self.name}: the prepared data in {folder} do not record the source they were "
          f"prepared from ({SOURCE_FILE})",
          hint=f"remove {folder} to prepare them again")
    current = self.current_source()
    if current is not None and current["fingerprint"] != recorded["fingerprint"]:
      raise errors.UserError(
          f"{self.name}: the prepared data in {folder} come from {recorded['origin']} "
          f"({fingerprint_lib.short(recorded['fingerprint'])}), not from {current['origin']} "
          f"({fingerprint_lib.short(current['fingerprint'])}) that the config names",
          hint=f"remove {folder} to prepare from {current['origin']}, or give another "
               "--config.data.data_dir")
    return recorded

  def _generate_examples(self, paths: Sequence[str], labels_NxC: np.ndarray,
                         file_names: Sequence[str]) -> Iterator[Tuple[int, dict]]:
    """(key, {"image": encoded bytes, "labels", "file_name"}) per image, keyed by list position.

    Every image is decoded once to check it; an unreadable one raises an error naming the file,
    or with `skip_corrupt` is left out and counted in the log.
    """
    skipped = []
    data = images.read_checked_many(paths, skip_corrupt=self.skip_corrupt)
    for i, (path, encoded, labels, name) in enumerate(zip(paths, data, labels_NxC, file_names)):
      if encoded is None:
        skipped.append(path)
        continue
      yield i, {"image": encoded, "labels": labels, "file_name": name}
    if skipped:
      logging.warning("%s: skipped %d unreadable image(s) (data.skip_corrupt=True), e.g. %s",
                      self.name, len(skipped), ", ".join(map(str, skipped[:5])))
