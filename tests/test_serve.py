"""`python -m ucsh_jax.serve` over loopback on a tiny image-folder run: uploads, refusals,
thumbnails by id only, the page in headless Chromium."""

import base64
import dataclasses
import html.parser
import http.client
import io
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib

import numpy as np
import PIL.Image
import pytest

import browser
import tiny_runs
from ucsh_jax import search
from ucsh_jax import searcher as searcher_lib
from ucsh_jax import serve
from ucsh_jax import thumbnails
from ucsh_jax.data import images
from ucsh_jax.report import gallery

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("serve")
  tiny_runs.image_folder_run(str(root / "images"), str(root / "run"))
  return root


def _wait_for_url(process, log_path, timeout_s=300):
  """The URL that `serve` prints once it listens (it compiles the model first)."""
  selector = selectors.DefaultSelector()
  selector.register(process.stdout, selectors.EVENT_READ)
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if selector.select(timeout=1.0):
      line = process.stdout.readline()
      if not line:
        break
      if line.startswith("serving "):
        return line.split(" on ")[-1].strip()
  process.kill()
  with open(log_path) as f:
    raise AssertionError(f"serve did not start:\n{f.read()[-3000:]}")


@pytest.fixture(scope="module")
def server(run):
  log_path = run / "serve.log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        [sys.executable, "-m", "ucsh_jax.serve", f"--workdir={run / 'run'}", "--port=0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
  try:
    url = _wait_for_url(process, log_path)
    yield url
  finally:
    process.terminate()
    process.wait(timeout=30)


def _request(url, method, path, body=None, headers=None):
  """(status, content type, body bytes) of one request; `path` is sent exactly as given."""
  host, port = url.split("//")[1].rstrip("/").split(":")
  connection = http.client.HTTPConnection(host, int(port), timeout=120)
  try:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.getheader("Content-Type"), response.read()
  finally:
    connection.close()


def _upload(url, data, filename="query.jpg", path="/api/search", field="image"):
  boundary = uuid.uuid4().hex
  body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
          f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
  body += data + f"\r\n--{boundary}--\r\n".encode()
  return _request(url, "POST", path, body,
                  {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _json(response):
  status, content_type, body = response
  assert content_type == "application/json", (status, body[:300])
  return status, json.loads(body)


def _png_header(width, height):
  """A valid PNG signature and header announcing width x height pixels, with no pixel data."""
  def chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
          + chunk(b"IEND", b""))


def test_listens_on_loopback_and_answers_an_uploaded_jpeg_like_search(run, server):
  assert server.startswith("http://127.0.0.1:")
  jpeg = run / "images" / "green" / "3.jpg"
  status, found = _json(_upload(server, jpeg.read_bytes(), "3.jpg", "/api/search?topk=4"))
  assert status == 200
  (answer,) = found
  assert answer["query"] == {"name": "3.jpg", "id": None, "label": None, "path": None}
  # The same results as `search --query=FILE --json` (computed here in-process).
  (expected,) = search.answers(searcher_lib.Searcher.from_workdir(str(run / "run")), str(jpeg),
                               None, 4)
  assert answer["results"] == expected["results"]
  assert all(hit["path"].startswith(str(run / "images")) for hit in answer["results"])

  status, found = _json(_request(server, "POST", "/api/search?query_index=2&topk=3"))
  assert status == 200 and len(found[0]["results"]) == 3
  codes = np.load(run / "run" / "codes.npz")
  assert found[0]["query"]["id"] == int(codes["query_ids"][2])


@pytest.mark.parametrize("name, data, status, message", [
    ("not an image", b"%PDF-1.4 certainly not pixels", 400,
     "the upload is not a readable image: its bytes are in no image format"),
    ("truncated jpeg", None, 400,
     "the upload is not a readable image: the image data is cut short or damaged"),
    ("empty", b"", 400, "the upload is empty"),
    ("bomb by header", _png_header(8000, 6000), 413,
     "the upload is too large: more than the 40,000,000 pixels accepted (8000 x 6000)"),
    ("bomb beyond PIL's limit", _png_header(100_000, 100_000), 413,
     "the upload is too large: more than the 40,000,000 pixels accepted"),
])
def test_bad_uploads_are_refused_and_the_server_keeps_answering(run, server, name, data,
                                                                status, message):
  if data is None:
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(noise).save(buffer, format="JPEG")
    data = buffer.getvalue()[:len(buffer.getvalue()) // 2]
  got, answer = _json(_upload(server, data))
  assert got == status and answer["error"].startswith(message), (name, answer)
  ok, found = _json(_upload(server, (run / "images" / "red" / "5.jpg").read_bytes()))
  assert ok == 200 and found[0]["results"]


def test_oversize_upload_and_bad_parameters_are_4xx_json(run, server):
  status, answer = _json(_upload(server, b"\xff" * (serve.MAX_UPLOAD_BYTES + 1024)))
  assert status == 413 and "Too Large" in answer["error"]
  jpeg = (run / "images" / "blue" / "1.jpg").read_bytes()
  for query in ("topk=0", "topk=abc", f"topk={serve.MAX_TOPK + 1}"):
    status, answer = _json(_upload(server, jpeg, path=f"/api/search?{query}"))
    assert status == 400 and "topk" in answer["error"]
  status, answer = _json(_request(server, "POST", "/api/search?query_index=8"))
  assert status == 400 and "0 to 7" in answer["error"]
  status, answer = _json(_request(server, "POST", "/api/search"))
  assert status == 400 and "'image'" in answer["error"]
  status, answer = _json(_request(server, "GET", "/api/search"))
  assert status == 405
  status, found = _json(_upload(server, jpeg))
  assert status == 200 and found[0]["results"]


def test_images_only_by_id_of_the_runs_data_set(run, server):
  status, content_type, body = _request(server, "GET", "/image/5")
  assert (status, content_type) == (200, "image/png")
  thumb = np.asarray(PIL.Image.open(io.BytesIO(body)))
  assert thumb.shape == (72, 96, 3)  # The 24x32 picture, longest side 96.
  for path in ("/image/../../../../etc/passwd", "/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
               "/image/..%2frun.json", f"/image/{run}/run/run.json", "/image/-1",
               "/image/108", "/image/5.0", "/../run.json", "/static/../../run.json"):
    status, answer = _json(_request(server, "GET", path))
    assert status == 404, path
    assert "root:" not in answer["error"] and "config" not in answer["error"]
  status, content_type, _ = _request(server, "GET", "/image/107")
  assert status == 200


def test_page_upload_form_and_query_results_render_in_chromium(run, server, tmp_path):
  status, content_type, body = _request(server, "GET", "/")
  assert status == 200 and content_type.startswith("text/html")
  assert b'enctype="multipart/form-data"' in body and b'name="image"' in body
  status, _, body = _upload(server, (run / "images" / "red" / "2.jpg").read_bytes(),
                            "<b>2</b>.jpg", path="/")
  assert status == 200 and b"Results for &lt;b&gt;2&lt;/b&gt;.jpg" in body
  assert body.count(b'src="/image/') >= 10 + 8  # 10 results and the 8 queries to pick from.
  status, _, body = _upload(server, b"no image", path="/")
  assert status == 400 and b"not a readable image" in body

  shot = tmp_path / "page.png"
  browser.run(f"--screenshot={shot}", "--window-size=1000,900", f"{server}?query_index=1",
              user_data_dir=tmp_path / "profile", timeout_s=120)
  pixels = np.asarray(PIL.Image.open(shot).convert("RGB")).astype(np.int32)
  assert pixels.shape == (900, 1000, 3)
  # The thumbnails' coloured squares (text and frames are grey, black or thin link blue).
  coloured = (pixels.max(-1) - pixels.min(-1)) > 120
  assert coloured.mean() > 0.02, coloured.mean()


class _Figures(html.parser.HTMLParser):
  """The <figure> attributes of a page, each with its <img> src and the <pre id=probe> text."""

  def __init__(self):
    super().__init__()
    self.figures, self.probe, self._in_probe = [], "", False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "figure":
      self.figures.append(dict({"class": ""}, **attrs, img=None))
    elif tag == "img" and self.figures:
      self.figures[-1]["img"] = attrs["src"]
    self._in_probe = tag == "pre" and attrs.get("id") == "probe"

  def handle_data(self, data):
    if self._in_probe:
      self.probe += data


def _figures(text):
  parsed = _Figures()
  parsed.feed(text)
  return parsed


# Appended to a saved page: after load, each figure's frame colour and its image's drawn size.
_PROBE = """<script>
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = Array.from(document.querySelectorAll("figure"), (f) => {
    const img = f.querySelector("img");
    return [f.className.replace(/ /g, ".") || "-", getComputedStyle(f).borderTopColor.replace(/ /g, ""),
            img ? img.naturalWidth : 0, img ? img.naturalHeight : 0].join(" ");
  }).join("\\n");
  document.body.appendChild(pre);
});
</script>"""
GREEN, RED = "rgb(46,125,50)", "rgb(198,40,40)"


def _probe_in_chromium(server, page, tmp_path):
  """[(classes joined by ".", frame colour, natural width, natural height)] of the figures of
  `page` (HTML bytes from `server`) as Chromium draws them."""
  path = tmp_path / "probe.html"
  path.write_text(page.decode().replace("<head>", f'<head><base href="{server}">')
                  .replace("</body>", _PROBE + "</body>"))
  dom = browser.run("--virtual-time-budget=10000", "--dump-dom", f"file://{path}",
                    user_data_dir=tmp_path / "profile", timeout_s=120).stdout
  return [line.split() for line in _figures(dom).probe.strip().splitlines()]


def test_results_are_framed_green_or_red_by_a_shared_label(run, server, tmp_path):
  status, _, page = _request(server, "GET", "/?query_index=1&topk=40")
  assert status == 200
  figures = _figures(page.decode()).figures
  hits = [f for f in figures if f["class"].startswith("hit")]
  assert len(hits) == 40
  codes = np.load(run / "run" / "codes.npz")
  query_folder = os.path.basename(os.path.dirname(
      searcher_lib.item_path(searcher_lib.Searcher.from_workdir(str(run / "run")).run.source,
                             int(codes["query_ids"][1]))))
  # Relevant = the item's class folder is the query's (the labels of an image folder).
  expected = [hit["data-relevant"] == "1" for hit in hits]
  assert [f"/{query_folder}/" in s for s in _hit_paths(server, 1, 40)] == expected
  assert [hit["class"] for hit in hits] == [
      "hit relevant" if r else "hit irrelevant" for r in expected]
  assert True in expected and False in expected
  drawn = [d for d in _probe_in_chromium(server, page, tmp_path) if d[0].startswith("hit")]
  assert [d[1] for d in drawn] == [GREEN if r else RED for r in expected]
  assert all(int(d[2]) > 0 for d in drawn)  # The thumbnails were drawn.

  shot = tmp_path / "marks.png"
  browser.run(f"--screenshot={shot}", "--window-size=1000,1400",
              f"{server}?query_index=1&topk=40", user_data_dir=tmp_path / "profile",
              timeout_s=120)
  pixels = np.asarray(PIL.Image.open(shot).convert("RGB")).astype(np.int32)
  for colour in ((46, 125, 50), (198, 40, 40)):  # Both frames on screen, 4 px wide.
    assert (np.abs(pixels - colour).max(-1) <= 2).sum() > 1000, colour


def _hit_paths(server, query_index, topk):
  _, found = _json(_request(server, "POST",
                            f"/api/search?query_index={query_index}&topk={topk}"))
  return [hit["path"] for hit in found[0]["results"]]


def test_an_uploaded_image_is_shown_as_the_query_and_its_results_carry_no_mark(run, server,
                                                                                tmp_path):
  data = (run / "images" / "red" / "2.jpg").read_bytes()
  status, _, page = _upload(server, data, "2.jpg", path="/")
  assert status == 200
  figures = _figures(page.decode()).figures
  (query,) = [f for f in figures if "query" in f["class"].split()]
  assert query["class"] == "query upload"
  prefix = "data:image/png;base64,"
  assert query["img"].startswith(prefix)
  shown = np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(query["img"][len(prefix):]))))
  expected = np.asarray(thumbnails.from_array(images.decode_rgb(data, "2.jpg")))
  np.testing.assert_array_equal(shown, expected)
  hits = [f for f in figures if f["class"].startswith("hit")]
  assert len(hits) == 10 and all(f["class"] == "hit" for f in hits)  # No label: no mark.
  assert all("data-relevant" not in f for f in hits)
  assert b"This query has no label" in page
  drawn = _probe_in_chromium(server, page, tmp_path)
  (upload,) = [d for d in drawn if d[0] == "query.upload"]
  assert upload[2:] == [str(expected.shape[1]), str(expected.shape[0])]  # Decoded by Chromium.


def _placeholder_ink(page: str, tmp_path, wide: bool) -> int:
  """Dark pixels of the query-number input drawn alone (its frame transparent), at its own
  width or at a width that fits any text."""
  css = ("<style>body * { visibility: hidden !important; } input[name=query_index] { "
         "visibility: visible !important; position: fixed !important; left: 10px; top: 10px; "
         "border-color: transparent !important; outline: none !important; "
         f"background: #fff !important; {'width: 40em !important;' if wide else ''} }}</style>")
  path, shot = tmp_path / "input.html", tmp_path / f"input_{wide}.png"
  path.write_text(page.replace("</head>", css + "</head>"))
  browser.run(f"--screenshot={shot}", "--window-size=800,60", f"file://{path}",
              user_data_dir=tmp_path / "profile", timeout_s=120)
  pixels = np.asarray(PIL.Image.open(shot).convert("L"))
  return int((pixels < 200).sum())


@pytest.mark.parametrize("num_query", [8, 300, 12345])
def test_the_query_number_placeholder_is_drawn_whole(run, tmp_path, num_query):
  searcher = searcher_lib.Searcher.from_workdir(str(run / "run"))
  searcher.run = dataclasses.replace(
      searcher.run, splits=searcher.run.splits._replace(query=np.arange(num_query) % 100))
  service = serve.Service(searcher, topk=5, max_pixels=images.MAX_QUERY_PIXELS)
  page = serve.create_app(service).test_client().get("/").data.decode()
  assert f'placeholder="0..{num_query - 1}"' in page
  ink = _placeholder_ink(page, tmp_path, wide=False)
  assert ink > 20 and ink == _placeholder_ink(page, tmp_path, wide=True)


@pytest.mark.parametrize("host, port, message", [
    ("127.0.0.1", None, "port {port} on 127.0.0.1 is in use by another program"),
    ("127.0.0.1", 70000, "--port=70000: a port is a number from 0 to 65535"),
    ("192.0.2.1", 0, "cannot listen on 192.0.2.1 port 0: "),  # Not this machine's address.
])
def test_an_address_that_cannot_be_used_is_one_error_line(run, host, port, message):
  with socket.create_server(("127.0.0.1", 0)) as taken:
    port = taken.getsockname()[1] if port is None else port
    result = subprocess.run(
        [sys.executable, "-m", "ucsh_jax.serve", f"--workdir={run / 'run'}", f"--host={host}",
         f"--port={port}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.splitlines()
  assert line.startswith("error: " + message.format(port=port)), line


def test_in_process_app_compiles_once_and_decodes_by_header_first(run):
  searcher = searcher_lib.Searcher.from_workdir(str(run / "run"))
  service = serve.Service(searcher, topk=5, max_pixels=images.MAX_QUERY_PIXELS)
  service.warm_up()
  client = serve.create_app(service).test_client()
  with tiny_runs.traces() as traced:
    for name in ("red/1.jpg", "blue/2.jpg", "green/3.jpg"):
      data = (run / "images" / name).read_bytes()
      response = client.post("/api/search", data={"image": (io.BytesIO(data), name)})
      assert response.status_code == 200 and len(response.get_json()[0]["results"]) == 5
  assert traced == []  # Compiled once, by warm_up.
  with pytest.raises(serve.BadRequest, match=r"more than the 1,000 pixels accepted \(40 x 30\)"):
    serve.decode_upload(_png_header(40, 30), max_pixels=1000)
  image = serve.decode_upload((run / "images" / "red" / "1.jpg").read_bytes())
  assert image.shape == (24, 32, 3) and image.dtype == np.uint8


def test_features_run_page_shows_no_images_and_refuses_uploads(run, tmp_path):
  workdir, _, labels = tiny_runs.features_run(str(tmp_path))
  service = serve.Service(searcher_lib.Searcher.from_workdir(workdir), topk=3,
                          max_pixels=images.MAX_QUERY_PIXELS)
  client = serve.create_app(service).test_client()
  page = client.get("/?query_index=0")
  assert page.status_code == 200 and b"Results for query 0 of the run" in page.data
  assert b"<img" not in page.data and b'type="file"' not in page.data
  response = client.get("/image/0")
  assert response.status_code == 404 and "feature vectors" in response.get_json()["error"]
  jpeg = (run / "images" / "red" / "1.jpg").read_bytes()
  response = client.post("/api/search", data={"image": (io.BytesIO(jpeg), "1.jpg")})
  assert response.status_code == 400
  assert "hashes feature vectors" in response.get_json()["error"]
  response = client.post("/api/search?query_index=3")
  (answer,) = response.get_json()
  assert response.status_code == 200 and len(answer["results"]) == 3
  for hit in answer["results"]:
    assert hit["label"] == np.flatnonzero(labels[hit["id"]]).tolist()
  # The page frames each result by a shared label of the multi-hot rows.
  page = client.get("/?query_index=3&topk=100").data.decode()
  hits = [f for f in _figures(page).figures if f["class"].startswith("hit")]
  query_item = int(searcher_lib.Searcher.from_workdir(workdir).run.splits.query[3])
  (answer,) = client.post("/api/search?query_index=3&topk=100").get_json()
  relevant = gallery.shares_label(labels[query_item], labels[[h["id"] for h in answer["results"]]])
  assert [h["data-relevant"] for h in hits] == [str(int(r)) for r in relevant]
  assert True in relevant and False in relevant
