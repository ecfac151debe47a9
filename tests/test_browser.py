"""The page tests' Chromium: found on PATH only, and a missing one fails (never skips)."""

import re
import shutil

import pytest

import browser


def test_chromium_is_the_one_on_path(monkeypatch, tmp_path):
  fake = tmp_path / "chromium"
  fake.write_text("#!/bin/sh\n")
  fake.chmod(0o755)
  monkeypatch.setenv("PATH", str(tmp_path))
  assert browser.executable() == str(fake)


def test_no_chromium_on_path_fails_with_how_to_install_it(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))  # A folder with no chromium.
  assert shutil.which("chromium") is None
  with pytest.raises(BaseException) as raised:  # A skip would propagate as a skip: catch all.
    browser.executable()
  assert raised.type is pytest.fail.Exception, raised.type
  assert re.search(r"no chromium on PATH.*\./setup\.sh.*apt-get install chromium",
                   str(raised.value))
