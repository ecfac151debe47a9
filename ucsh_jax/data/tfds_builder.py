"""What the project's tfds builders share: the manual directory and what to do with bad images.

The builders prepare without TensorFlow: they hand tfds encoded image bytes (PNG made with PIL, or
the original JPEG bytes), never numpy image arrays, and are prepared with
`file_format="array_record"`; `tfds.data_source` then reads them without TensorFlow.
tensorflow-datasets 4.9.10 imports `importlib_resources` when it prepares a builder that lives in a
package but declares it only for Python < 3.9 (tfds issue #11212), so it must be installed.
"""

from typing import Optional

from absl import logging
from etils import epath
import tensorflow_datasets as tfds


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

  def log_skipped(self, skipped: list) -> None:
    """Logs how many unreadable images `skip_corrupt` left out, with the first few names."""
    if skipped:
      logging.warning("%s: skipped %d unreadable image(s) (data.skip_corrupt=True), e.g. %s",
                      self.name, len(skipped), ", ".join(map(str, skipped[:5])))
