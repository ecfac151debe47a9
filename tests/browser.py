"""Headless Chromium for the tests that render a page (the search page, the report).

Chromium is the `chromium` on PATH, which `./setup.sh` installs (Debian's package); where there is
none the calling test fails saying how to install it.
"""

import shutil
import subprocess

import pytest

INSTALL_HINT = "run ./setup.sh, or install Debian's package: apt-get install chromium"


def executable() -> str:
  """The path of `chromium` on PATH; fails the calling test where there is none."""
  path = shutil.which("chromium")
  if path is None:
    pytest.fail(f"no chromium on PATH (this test renders a page in headless Chromium): "
                f"{INSTALL_HINT}", pytrace=False)
  return path


def run(*args: str, user_data_dir, timeout_s: float = 180) -> subprocess.CompletedProcess:
  """Headless Chromium with `args` (a URL, --screenshot=..., --dump-dom, ...) and its own
  profile folder; raises CalledProcessError when it fails."""
  command = [executable(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={user_data_dir}", "--hide-scrollbars", *args]
  return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)
