"""download_pretrained: cache hits, offline failure, and a (simulated) download."""

import hashlib
import io
import urllib.error
import urllib.request

import pytest

from ucsh_jax import errors
from ucsh_jax import models
from ucsh_jax.models import download


def _no_network(*args, **kwargs):
  raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_cached_file_is_returned_without_network(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  (tmp_path / "vgg16.tv_in1k").mkdir()
  for name, relative in (("torchvision", "vgg16-397923af.pth"),
                         ("vgg16-397923af.pth", "vgg16-397923af.pth"),
                         ("timm", "vgg16.tv_in1k/model.safetensors"),
                         ("keras", "vgg16_weights_tf_dim_ordering_tf_kernels.h5")):
    (tmp_path / relative).write_bytes(b"cached")
    assert models.download_pretrained(name, str(tmp_path)) == str(tmp_path / relative)


def test_offline_download_fails_fast_saying_what_to_put_where(tmp_path, monkeypatch):
  monkeypatch.setattr(urllib.request, "urlopen", _no_network)
  with pytest.raises(errors.UserError) as error:
    models.download_pretrained("keras", str(tmp_path / "cache"))
  message = str(error.value)
  assert download.SOURCES["keras"].url in message
  assert str(tmp_path / "cache" / "vgg16_weights_tf_dim_ordering_tf_kernels.h5") in message
  assert "name resolution" in message
  assert not list((tmp_path / "cache").iterdir())  # no partial file left behind
  with pytest.raises(ValueError, match="unknown pretrained weights 'vgg19'"):
    models.download_pretrained("vgg19", str(tmp_path))


def test_download_writes_the_file_and_checks_torchvision_hash(tmp_path, monkeypatch):
  content = b"weights" * 100
  requested = []

  def fake_urlopen(url, timeout):
    requested.append((url, timeout))
    return io.BytesIO(content)

  monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
  path = models.download_pretrained("timm", str(tmp_path), timeout_s=3.0)
  assert path == str(tmp_path / "vgg16.tv_in1k" / "model.safetensors")
  assert open(path, "rb").read() == content
  assert requested == [(download.SOURCES["timm"].url, 3.0)]

  assert not hashlib.sha256(content).hexdigest().startswith("397923af")
  with pytest.raises(errors.UserError, match="does not start with 397923af"):
    models.download_pretrained("torchvision", str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg16.tv_in1k"]
