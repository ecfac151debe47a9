"""A local search page for a trained run: `python -m ucsh_jax.serve --workdir=W [--port=8765]`.

  GET  /                    the page: upload an image or pick one of the run's queries
  GET  /?query_index=N      the page with the results of the run's N-th query
  POST /                    the page with the results of an upload (shown as the query)
  POST /api/search?topk=K   multipart field `image` (or query parameter `query_index`): the
                            JSON list that `python -m ucsh_jax.search --json` prints
  GET  /image/ID            PNG thumbnail of item ID of the run's data set (nothing else)

It listens on 127.0.0.1 unless `--host` says otherwise, compiles the model once at start-up and
refuses what a public service would, with a 4xx and JSON `{"error": ...}`: an upload over
MAX_UPLOAD_BYTES, a file that is not an image, an image of more than images.MAX_QUERY_PIXELS
pixels (checked from its header, before decoding). Images are looked up by id in the run's data
set, never by a path from the request.

Where the query and the results have labels (a query of the run, a labelled data set), each
result is framed green when it shares a label with the query and red when it does not, as in
the report's gallery.
"""

import base64
import errno
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

from absl import flags
from absl import logging
import flask
import numpy as np
from werkzeug import exceptions
from werkzeug import serving

from ucsh_jax import cli
from ucsh_jax import errors
from ucsh_jax import searcher as searcher_lib
from ucsh_jax import thumbnails
from ucsh_jax.data import images

MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_TOPK = 1000
_QUERY_STRIP = 12  # Queries of the run shown as thumbnails to pick from.
_LOOPBACK = ("127.0.0.1", "localhost", "::1")

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs, so that importing this module is free)."""
  flags.DEFINE_string("workdir", None, "The run's directory (trained, then encoded).")
  flags.DEFINE_integer("port", 8765, "TCP port (0: any free port, printed at start-up).")
  flags.DEFINE_string("host", "127.0.0.1",
                      "Interface to listen on; 0.0.0.0 exposes the page to the network.")
  flags.DEFINE_integer("topk", 10, "Results per query unless a request asks otherwise.")
  flags.mark_flags_as_required(["workdir"])


class BadRequest(Exception):
  """A request refused with `status` and a message for the JSON `{"error": ...}`."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


def decode_upload(data: bytes, max_pixels: int = images.MAX_QUERY_PIXELS) -> np.ndarray:
  """Uploaded bytes -> uint8 RGB (H, W, 3); BadRequest 400 (not an image) or 413 (too many
  pixels, read from the header before anything is decoded)."""
  if not data:
    raise BadRequest(400, "the upload is empty: send an image file in the field 'image'")
  try:
    return images.decode_rgb(data, "the upload", max_pixels)
  except images.TooManyPixelsError as e:
    raise BadRequest(413, str(e)) from e
  except images.CorruptImageError as e:
    raise BadRequest(400, str(e)) from e


def _topk(value: Optional[str], default: int) -> int:
  if value in (None, ""):
    return default
  if not value.isdigit() or not 1 <= int(value) <= MAX_TOPK:
    raise BadRequest(400, f"topk must be an integer from 1 to {MAX_TOPK}, got {value!r}")
  return int(value)


def shares_label(query_label: Any, hit_label: Any) -> Optional[bool]:
  """Whether a result shares a label with the query (labels as in a search answer: an int, or
  a list of a multi-hot row's classes); None where either has no label."""
  if query_label is None or hit_label is None:
    return None
  as_set = lambda label: set(label) if isinstance(label, list) else {label}
  return bool(as_set(query_label) & as_set(hit_label))


def data_url(pixels: np.ndarray) -> str:
  """A PNG thumbnail of uint8 RGB `pixels` as a data: URL (an upload shown on the page; PNG
  made from the decoded pixels, never the uploaded bytes)."""
  png = thumbnails.png_bytes(thumbnails.from_array(pixels))
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _query_index(value: str, num_query: int) -> int:
  if not value.isdigit() or int(value) >= num_query:
    raise BadRequest(400, f"query_index must be an integer from 0 to {num_query - 1}, "
                          f"got {value!r}")
  return int(value)


class Service:
  """The searches behind the page and the API, one at a time (a lock around the model)."""

  def __init__(self, searcher: searcher_lib.Searcher, *, topk: int, max_pixels: int):
    self.searcher, self.topk, self.max_pixels = searcher, topk, max_pixels
    self.lock = threading.Lock()
    self.source = searcher.collection.source
    self.pixels = thumbnails.has_pixels(self.source)

  def warm_up(self) -> None:
    """Restores the parameters and compiles the forward pass before the first request."""
    if self.searcher.kind == "image":
      size = self.searcher.run.config.data.image_size
      self.searcher.encode_images([np.zeros((size, size, 3), np.uint8)])
    else:
      self.searcher.encode_features(np.zeros((1, self.searcher.input_dim), np.float32))

  def answer(self, request: flask.Request) -> List[Dict[str, Any]]:
    """The search answer to an upload (`image`) or a `query_index`, as `search --json`."""
    return self.answer_and_upload(request)[0]

  def answer_and_upload(
      self, request: flask.Request) -> Tuple[List[Dict[str, Any]], Optional[np.ndarray]]:
    """`answer(request)` and the uploaded image's decoded pixels (None for a query_index)."""
    topk = _topk(request.args.get("topk") or request.form.get("topk"), self.topk)
    index = request.args.get("query_index") or request.form.get("query_index")
    upload, pixels = request.files.get("image"), None
    if upload is not None and upload.filename:
      pixels = decode_upload(upload.read(), self.max_pixels)
      query = {"name": upload.filename, "id": None, "label": None, "path": None}
      with self.lock:
        codes = self.searcher.encode_images([pixels])
    elif index not in (None, ""):
      n = _query_index(index, len(self.searcher.run.splits.query))
      query, codes = self.searcher.run_query(n)
    else:
      raise BadRequest(400, "send an image file in the field 'image' or a query_index")
    with self.lock:
      hits = self.searcher.search(codes, topk)[0]
    return [{"query": query, "results": hits}], pixels

  def thumbnail_png(self, item: int) -> bytes:
    if not self.pixels:
      raise BadRequest(404, "this run's data set holds feature vectors: no images to show")
    if not 0 <= item < len(self.source):
      raise BadRequest(404, f"no item {item}: the data set has {len(self.source)} items")
    return thumbnails.png_bytes(thumbnails.thumbnail(self.source, item))

  def label_text(self, label: Any) -> str:
    """A label for the page, with the class name when the data set has one."""
    if label is None:
      return "-"
    names = getattr(self.source, "class_names", None)
    values = label if isinstance(label, list) else [label]
    return ", ".join(f"{v} ({names[v]})" if names else str(v) for v in values)


def create_app(service: Service, *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> flask.Flask:
  """The Flask app of the page, the API and the thumbnails of `service`'s run."""
  searcher = service.searcher
  app = flask.Flask(__name__)
  app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes

  def page(found: Optional[List[Dict[str, Any]]], error: Optional[str], status: int,
           upload: Optional[np.ndarray] = None):
    queries = searcher.run.splits.query
    strip = [(n, int(queries[n])) for n in range(min(_QUERY_STRIP, len(queries)))]
    placeholder = f"0..{len(queries) - 1}"
    html = flask.render_template_string(
        _PAGE, found=found, error=error, strip=strip, num_query=len(queries),
        placeholder=placeholder, pixels=service.pixels, label_text=service.label_text,
        topk=service.topk, workdir=searcher.run.workdir, kind=searcher.kind,
        shares_label=shares_label, upload_src=None if upload is None else data_url(upload),
        labelled=searcher.collection.source.labels is not None)
    return html, status

  @app.get("/")
  def index_page():
    if request_has_query():
      return search_page()
    return page(None, None, 200)

  @app.post("/")
  def search_page():
    try:
      found, upload = service.answer_and_upload(flask.request)
      return page(found, None, 200, upload)
    except BadRequest as e:
      return page(None, str(e), e.status)
    except errors.UserError as e:
      return page(None, str(e), 400)

  def request_has_query() -> bool:
    return flask.request.args.get("query_index") not in (None, "")

  @app.post("/api/search")
  def api_search():
    return flask.jsonify(service.answer(flask.request))

  @app.get("/image/<int:item>")
  def image(item: int):
    response = flask.Response(service.thumbnail_png(item), mimetype="image/png")
    response.headers["Cache-Control"] = "max-age=3600"
    return response

  @app.errorhandler(BadRequest)
  def bad_request(e: BadRequest):
    return flask.jsonify(error=str(e)), e.status

  @app.errorhandler(errors.UserError)
  def user_error(e: errors.UserError):
    return flask.jsonify(error=str(e)), 400

  @app.errorhandler(exceptions.HTTPException)
  def http_error(e: exceptions.HTTPException):
    return flask.jsonify(error=f"{e.name}: {e.description}"), e.code

  return app


def listen(host: str, port: int) -> socket.socket:
  """A TCP socket listening on (host, port); UserError where that address cannot be used (a
  port in use or out of range, a host that is not this machine's)."""
  if not 0 <= port <= 65535:
    raise errors.UserError(f"--port={port}: a port is a number from 0 to 65535")
  try:
    return socket.create_server((host, port), family=serving.select_address_family(host, port),
                                backlog=128)
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise errors.UserError(f"port {port} on {host} is in use by another program: stop it, or "
                             "start with another --port (--port=0 picks a free one)") from e
    raise errors.UserError(f"cannot listen on {host} port {port}: {e.strerror or e}") from e


def serve(app: flask.Flask, listener: socket.socket) -> Tuple[Any, str]:
  """A threaded WSGI server for `app` on the socket from `listen` (not started) and its URL."""
  host, port = listener.getsockname()[:2]
  server = serving.make_server(host, port, app, threaded=True, fd=listener.fileno())
  listener.close()  # The server holds its own duplicate of the socket.
  return server, f"http://{f'[{host}]' if ':' in host else host}:{server.port}/"


def main(argv):
  del argv  # cli.run refuses arguments other than flags.
  workdir = cli.absolute_path(FLAGS.workdir)
  listener = listen(FLAGS.host, FLAGS.port)  # Before the minutes of compiling: fails at once.
  service = Service(searcher_lib.Searcher.from_workdir(workdir), topk=FLAGS.topk,
                    max_pixels=images.MAX_QUERY_PIXELS)
  service.warm_up()
  server, url = serve(create_app(service), listener)
  if FLAGS.host not in _LOOPBACK:
    logging.warning("--host=%s: the page and the run's images are open to the network",
                    FLAGS.host)
  print(f"serving {workdir} on {url}", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>UCSH search</title>
<style>
 body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
 h1 { font-size: 1.3em; } .muted { color: #666; font-size: 0.9em; }
 .error { background: #fdd; border: 1px solid #c66; padding: 0.5em; }
 .grid { display: flex; flex-wrap: wrap; gap: 10px; }
 figure { margin: 0; padding: 6px; background: #fff; border: 4px solid #ddd; width: 110px; }
 figure img { width: 96px; height: 96px; object-fit: contain; background: #eee;
              image-rendering: pixelated; display: block; }
 figcaption { font-size: 0.8em; overflow-wrap: anywhere; }
 figure.query { border-color: #1565c0; }
 figure.relevant { border-color: #2e7d32; } figure.irrelevant { border-color: #c62828; }
 .relevant .mark { color: #2e7d32; } .irrelevant .mark { color: #c62828; }
 .key-relevant { color: #2e7d32; font-weight: bold; }
 .key-irrelevant { color: #c62828; font-weight: bold; }
</style></head><body>
<h1>UCSH search</h1>
<p class="muted">{{ workdir }}</p>
<form method="post" action="/" enctype="multipart/form-data">
 {% if kind == "image" %}<label>Image <input type="file" name="image"
   accept="image/*"></label>{% endif %}
 <label>or query <input type="number" name="query_index" min="0" max="{{ num_query - 1 }}"
   placeholder="{{ placeholder }}" style="width: calc({{ placeholder|length }}ch + 3em)"></label>
 <label>top <input type="number" name="topk" min="1" value="{{ topk }}" style="width:4em"></label>
 <button type="submit">Search</button>
</form>
{% if pixels %}<p class="muted">Queries of the run:</p><div class="grid">
 {% for n, item in strip %}<a href="/?query_index={{ n }}"><figure><img src="/image/{{ item }}"
   alt="query {{ n }}"><figcaption>query {{ n }}</figcaption></figure></a>{% endfor %}
</div>{% endif %}
{% if error %}<p class="error">{{ error }}</p>{% endif %}
{% for answer in found or [] %}
 <h2>Results for {{ answer.query.name }}</h2>
 {% if answer.query.label is not none and labelled %}<p class="muted">Frames:
   <span class="key-relevant">green</span> = shares a label with the query,
   <span class="key-irrelevant">red</span> = does not.</p>
 {% elif labelled %}<p class="muted">This query has no label: the results carry no mark of
   relevance.</p>{% endif %}
 <div class="grid">
 {% if upload_src %}<figure class="query upload"><img src="{{ upload_src }}"
   alt="your image"><figcaption>query: your image</figcaption></figure>
 {% elif pixels and answer.query.id is not none %}<figure class="query"><img
   src="/image/{{ answer.query.id }}" alt="query"><figcaption>query, label
   {{ label_text(answer.query.label) }}</figcaption></figure>{% endif %}
 {% for hit in answer.results %}{% set relevant = shares_label(answer.query.label, hit.label)
 %}<figure class="hit{% if relevant is not none %} {{ "relevant" if relevant else "irrelevant"
   }}" data-relevant="{{ relevant|int }}{% endif %}">{% if pixels %}<img src="/image/{{ hit.id }}"
   alt="item {{ hit.id }}">{% endif %}<figcaption>{% if relevant is not none %}<span
   class="mark">{{ "&#10003; shared label"|safe if relevant else "&#10007; no shared label"|safe
   }}</span><br>{% endif %}#{{ loop.index }} id {{ hit.id }}<br>
   distance {{ hit.distance }}<br>label {{ label_text(hit.label) }}
   {% if hit.path %}<br>{{ hit.path.rsplit("/", 1)[-1] }}{% endif %}</figcaption></figure>
 {% endfor %}</div>
{% endfor %}
</body></html>
"""


if __name__ == "__main__":
  define_flags()
  cli.run(main)
