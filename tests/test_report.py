"""`python -m ucsh_jax.report`: the page, its numbers, the gallery, a real browser, refusals.

One tiny digits run (16 bits, no VGG16) with baselines at 16 and 8 bits in a subfolder is shared
by the module; the report encodes the run itself (the fixture leaves no codes.npz).
"""

import html.parser
import json
import os
import shutil
import subprocess
import sys

import matplotlib.text
import numpy as np
import PIL.Image
import pytest

import browser
import tiny_runs
from configs import digits as digits_config
from ucsh_jax import errors
from ucsh_jax import metrics
from ucsh_jax import run_record
from ucsh_jax import train
from ucsh_jax.baselines.__main__ import run_baselines
from ucsh_jax.report import build
from ucsh_jax.report import curves as curves_lib
from ucsh_jax.report import events
from ucsh_jax.report import gallery
from ucsh_jax.report import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE_METHODS, BASELINE_BITS = ("itq", "lsh"), (16, 8)  # Table 1 order
PLOTS = {f"{name}_{bits}.png" for name in ("pr", "precision_at_k", "precision_radius")
         for bits in (16, 8)} | {"losses.png", "threshold.png", "cluster_sizes.png",
                                 "bit_balance.png", "epoch_changes.png"}


def _config():
  config = digits_config.get_config()
  config.num_epochs, config.bits, config.batch_size, config.num_clusters = 2, 16, 16, 4
  config.kmeans_iters, config.threshold_samples, config.model.decoder_hidden = 5, 128, 16
  config.eval.batch_size, config.log_every_steps = 64, 2
  config.data.num_query, config.data.num_train, config.data.num_database = 40, 64, 160
  return config


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  """(workdir, config, path of index.html) of the shared run's report."""
  workdir = str(tmp_path_factory.mktemp("report") / "run")
  config = _config()
  run_record.check_or_write(config, workdir, config_file=None)
  train.train_and_evaluate(config, workdir)
  run_baselines(config, os.path.join(workdir, "baselines"), BASELINE_METHODS, BASELINE_BITS)
  assert not os.path.exists(os.path.join(workdir, "codes.npz"))
  return workdir, config, build.write_report(workdir)


class _Page(html.parser.HTMLParser):
  """The <img> sources, the gallery figures and the <pre id=probe> text of a page."""

  def __init__(self):
    super().__init__()
    self.images, self.rows, self.probe, self._in_probe = [], [], "", False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.images.append(attrs["src"])
    elif tag == "div" and attrs.get("class") == "gallery-row":
      self.rows.append({"query": int(attrs["data-query"]), "hits": []})
    elif tag == "figure" and "data-item" in attrs:
      self.rows[-1]["hits"].append(attrs)
    self._in_probe = tag == "pre" and attrs.get("id") == "probe"

  def handle_data(self, data):
    if self._in_probe:
      self.probe += data


def _parse(text):
  page = _Page()
  page.feed(text)
  return page


def _read(path):
  with open(path) as f:
    return f.read()


def _codes(workdir):
  with np.load(os.path.join(workdir, "codes.npz")) as f:
    return dict(f)


def _baseline_codes(workdir, method, bits):
  with np.load(os.path.join(workdir, "baselines", "baselines_codes.npz")) as f:
    return {"query_codes": f[f"{method}_{bits}_query_codes"],
            "database_codes": f[f"{method}_{bits}_database_codes"],
            "query_labels": f["query_labels"], "database_labels": f["database_labels"]}


def test_page_references_every_plot_and_the_gallery(report):
  workdir, _, page_path = report
  page = _parse(_read(page_path))
  out_dir = os.path.dirname(page_path)
  plots_found = {src for src in page.images if not src.startswith("gallery/")}
  assert plots_found == PLOTS
  assert len(page.rows) == gallery.NUM_QUERIES
  assert all(len(row["hits"]) == gallery.NUM_NEIGHBOURS for row in page.rows)
  assert sum(src.startswith("gallery/") for src in page.images) == 11 * gallery.NUM_QUERIES
  for src in page.images:
    with PIL.Image.open(os.path.join(out_dir, src)) as image:
      assert min(image.size) > 0
  assert os.path.exists(os.path.join(workdir, "codes.npz"))  # The report encoded the run.


def test_plotted_values_are_the_metrics_numbers(report):
  workdir, _, page_path = report
  with open(os.path.join(os.path.dirname(page_path), "data.json")) as f:
    plotted = json.load(f)["curves"]
  assert [c["label"] for c in plotted["16"]] == ["UCSH", "ITQ", "LSH"]
  assert [c["label"] for c in plotted["8"]] == ["ITQ", "LSH"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert plotted["16"][0]["map"] == pytest.approx(json.load(f)["map"], abs=1e-12)
  expected = [("16", 0, _codes(workdir))] + [
      (str(b), i, _baseline_codes(workdir, m, b))
      for b in BASELINE_BITS for i, m in enumerate(BASELINE_METHODS, start=1 if b == 16 else 0)]
  for bits, i, codes in expected:
    curve = plotted[bits][i]
    args = (codes["query_codes"], codes["database_codes"], codes["query_labels"],
            codes["database_labels"])
    assert curve["map"] == pytest.approx(metrics.mean_average_precision(*args), abs=1e-12)
    assert curve["k"][-1] == 160 and 100 in curve["k"]
    for k in (1, 100, 160):
      assert curve["precision_at_k"][curve["k"].index(k)] == pytest.approx(
          metrics.precision_at_k(*args, ks=[k])[0], abs=1e-12)
    for r in (0, 2, 5):
      assert curve["precision_within_radius"][r] == pytest.approx(
          metrics.precision_within_radius(*args, radius=r), abs=1e-12)
    _, recall = metrics.precision_recall_curve(*args)
    np.testing.assert_allclose(curve["recall_within_radius"], recall, atol=1e-12)


def test_figures_draw_the_curves_with_map_in_the_legend(report):
  workdir, _, _ = report
  ucsh = curves_lib.curves(_codes(workdir), label="UCSH", topk=None)
  itq = curves_lib.curves(_baseline_codes(workdir, "itq", 16), label="ITQ", topk=None)
  fig = plots.precision_at_k([ucsh, itq])
  lines = fig.axes[0].get_lines()
  np.testing.assert_array_equal(lines[1].get_xdata(), itq.ks_P)
  np.testing.assert_array_equal(lines[1].get_ydata(), itq.precision_at_k_P)
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == [f"UCSH (MAP@all {ucsh.map:.3f})", f"ITQ (MAP@all {itq.map:.3f})"]
  pr = plots.precision_recall([ucsh]).axes[0].get_lines()[0]
  np.testing.assert_array_equal(pr.get_xdata(), ucsh.recall_R)
  np.testing.assert_array_equal(pr.get_ydata(), ucsh.precision_R)


def test_training_figures_draw_the_logged_scalars(report):
  workdir, config, _ = report
  scalars = events.read_scalars(workdir)
  steps_per_epoch = config.data.num_train // config.batch_size
  logged = [t for t in plots.LOSS_TERMS if t in scalars]
  assert {"loss", "loss_l2", "loss_vae", "loss_clustering", "loss_separating"} <= set(logged)
  steps = scalars["loss"][0]
  assert steps.tolist() == list(range(2, 2 * steps_per_epoch + 1, 2))  # Every logging interval.
  panels = plots.losses(scalars).axes
  assert [ax.get_title() for ax in panels] == logged
  for ax, term in zip(panels, logged):
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), scalars[term][1])
  threshold_steps, values = scalars["threshold"]
  assert threshold_steps.tolist() == [0, steps_per_epoch]  # One per epoch.
  line = plots.threshold(threshold_steps, values, steps_per_epoch).axes[0].get_lines()[0]
  np.testing.assert_array_equal(line.get_xdata(), [0, 1])
  np.testing.assert_array_equal(line.get_ydata(), values)


def test_gallery_borders_and_distances_match_the_codes(report):
  workdir, _, page_path = report
  rows = _parse(_read(page_path)).rows
  codes = _codes(workdir)
  query_ids, db_ids = list(codes["query_ids"]), list(codes["database_ids"])
  chosen = np.sort(np.random.default_rng(gallery.SEED).choice(40, 10, replace=False))
  assert [row["query"] for row in rows] == [query_ids[q] for q in chosen]
  dist = metrics.hamming_distance(codes["query_codes"], codes["database_codes"])
  for row in rows:
    q = query_ids.index(row["query"])
    ranked = np.argsort(dist[q], kind="stable")[:10]
    assert [int(h["data-item"]) for h in row["hits"]] == [db_ids[j] for j in ranked]
    for hit, j in zip(row["hits"], ranked):
      assert int(hit["data-distance"]) == dist[q, j]
      relevant = codes["query_labels"][q] == codes["database_labels"][j]
      assert hit["data-relevant"] == str(int(relevant))
      assert hit["class"] == ("hit relevant" if relevant else "hit irrelevant")
  assert {"hit relevant", "hit irrelevant"} <= {h["class"] for r in rows for h in r["hits"]}


def _chromium(*args, user_data_dir):
  return browser.run("--virtual-time-budget=10000", *args, user_data_dir=user_data_dir)


_PROBE = """<script>
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = Array.from(document.images, (img) => {
    return [img.getAttribute("src"), img.naturalWidth, img.naturalHeight, img.width,
            img.height].join(" ");  // Natural, then drawn (content box) sizes.
  }).join("\\n");
  document.body.appendChild(pre);
});
</script>"""


def test_chromium_draws_every_image_and_a_non_blank_page(report, tmp_path):
  _, _, page_path = report
  out_dir = os.path.dirname(page_path)
  probe = os.path.join(out_dir, "probe.html")
  with open(probe, "w") as f:
    f.write(_read(page_path).replace("</body>", _PROBE + "</body>"))
  dom = _chromium("--dump-dom", f"file://{probe}", user_data_dir=tmp_path / "profile").stdout
  os.remove(probe)
  drawn = [line.split() for line in _parse(dom).probe.strip().splitlines()]
  assert {d[0] for d in drawn} == set(_parse(_read(page_path)).images)
  for src, *sizes in drawn:
    assert min(int(s) for s in sizes) > 0, f"{src} is drawn at natural/rendered size {sizes}"

  shot = tmp_path / "report.png"
  _chromium(f"--screenshot={shot}", "--window-size=1280,1600", f"file://{page_path}",
            user_data_dir=tmp_path / "profile")
  with PIL.Image.open(shot) as image:
    pixels = np.asarray(image.convert("RGB")).astype(np.int32)
  assert pixels.shape[:2] == (1600, 1280)
  not_white = np.any(pixels < 235, axis=-1)
  assert 0.03 < not_white.mean() < 0.9, f"{not_white.mean():.3f} of the screenshot is drawn"
  assert len(np.unique(pixels.reshape(-1, 3) // 32, axis=0)) > 8  # Plots in colour, not one tone.


# The smallest text a report figure may show, in CSS points as drawn at 100 % zoom (the page's
# body text is 12 pt).
MIN_READABLE_PT = 10


def test_figure_texts_are_readable_at_the_size_the_page_draws_them(report, tmp_path,
                                                                   monkeypatch):
  workdir, _, page_path = report
  figures, save = {}, plots.save
  monkeypatch.setattr(plots, "save", lambda fig, path: figures.setdefault(
      os.path.basename(path), fig) and save(fig, path))
  assert build.write_report(workdir) == page_path
  assert set(figures) == PLOTS
  probe = os.path.join(os.path.dirname(page_path), "probe.html")
  with open(probe, "w") as f:
    f.write(_read(page_path).replace("</body>", _PROBE + "</body>"))
  dom = _chromium("--dump-dom", "--window-size=1280,1600", f"file://{probe}",
                  user_data_dir=tmp_path / "profile").stdout
  os.remove(probe)
  drawn = {d[0]: [int(v) for v in d[1:]] for d in
           (line.split() for line in _parse(dom).probe.strip().splitlines())}
  texts = set()
  for name, fig in figures.items():
    natural_width, _, width, _ = drawn[name]
    inches = fig.get_figwidth()
    assert natural_width == round(inches * plots.SAVE_DPI), name
    # A figure inch is drawn at `width / inches` CSS pixels; a CSS point is 96 / 72 pixels.
    scale = width / (inches * 96)
    for text in fig.findobj(matplotlib.text.Text):
      if text.get_visible() and text.get_text().strip():
        shown_pt = text.get_fontsize() * scale
        assert shown_pt >= MIN_READABLE_PT, (name, text.get_text(), f"{shown_pt:.1f} pt")
        texts.add((name, text.get_text()))
  # What the issue found too small: the legends, the s_t and the heat map's axis labels.
  assert {("threshold.png", "s_t"), ("cluster_sizes.png", "cluster j"),
          ("cluster_sizes.png", "images in the cluster"),
          ("epoch_changes.png", plots.CHANGE_TERMS["assignments_changed"])} <= texts
  assert any(n == "pr_16.png" and t.startswith("UCSH (MAP@all ") for n, t in texts)


def test_compared_runs_with_other_splits_or_topk_are_refused(report, tmp_path):
  workdir, _, _ = report
  other = tmp_path / "other"
  shutil.copytree(os.path.join(workdir, "baselines"), other)
  summary_path = other / "baselines.json"
  summary = json.loads(summary_path.read_text())
  summary_path.write_text(json.dumps(dict(summary, topk=50)))
  with pytest.raises(errors.UserError, match="MAP@50, the report's run MAP@all"):
    build.write_report(workdir, compare=[str(other)])

  summary_path.write_text(json.dumps(summary))
  with np.load(other / "baselines_codes.npz") as f:
    arrays = dict(f)
  arrays["query_ids"] = arrays["query_ids"] + 1
  np.savez(other / "baselines_codes.npz", **arrays)
  with pytest.raises(errors.UserError, match="other query items"):
    build.write_report(workdir, compare=[str(other)])


def test_compared_runs_are_named_by_folder_and_grouped_by_code_length(report, tmp_path):
  workdir, _, _ = report
  other = tmp_path / "ucsh8"
  os.makedirs(other)
  shutil.copy(os.path.join(workdir, "run.json"), other)
  codes = _codes(workdir)
  for split in ("query", "database"):
    codes[f"{split}_codes"] = codes[f"{split}_codes"][:, :8]
  np.savez(other / "codes.npz", **codes)
  again = tmp_path / "again"
  shutil.copytree(os.path.join(workdir, "baselines"), again)
  page = build.write_report(workdir, compare=[str(other), str(again)])
  with open(os.path.join(os.path.dirname(page), "data.json")) as f:
    plotted = json.load(f)["curves"]
  assert [c["label"] for c in plotted["16"]] == ["UCSH", "ITQ", "LSH", "ITQ (again)",
                                                 "LSH (again)"]
  assert [c["label"] for c in plotted["8"]] == ["ITQ", "LSH", "UCSH (ucsh8)", "ITQ (again)",
                                                "LSH (again)"]
  assert plotted["8"][2]["map"] == pytest.approx(metrics.mean_average_precision(
      codes["query_codes"], codes["database_codes"], codes["query_labels"],
      codes["database_labels"]), abs=1e-12)
  baselines = os.path.join(workdir, "baselines", "baselines.json")
  shutil.move(baselines, tmp_path / "baselines.json")
  try:  # Without the baselines, no 8-bit figure stays behind.
    page = build.write_report(workdir)
    assert not any("_8" in name for name in os.listdir(os.path.dirname(page)))
  finally:
    shutil.move(tmp_path / "baselines.json", baselines)
  build.write_report(workdir)  # The shared page again.


def test_codes_older_than_the_latest_checkpoint_are_encoded_again(report):
  workdir, _, _ = report
  path = os.path.join(workdir, "codes.npz")
  before = _codes(workdir)
  os.utime(path, (0, 0))  # Older than any checkpoint.
  build.write_report(workdir)
  assert os.path.getmtime(path) > 0
  after = _codes(workdir)
  assert sorted(after) == sorted(before)
  for key, value in before.items():
    np.testing.assert_array_equal(after[key], value)


def test_cluster_sizes_of_every_cluster_are_drawn_per_epoch(tmp_path, monkeypatch):
  import tensorboardX  # pylint: disable=g-import-not-at-top
  writer = tensorboardX.SummaryWriter(str(tmp_path))
  sizes_ExN = np.arange(3 * 11).reshape(3, 11) % 7 + 1
  for epoch, sizes in enumerate(sizes_ExN):
    for j, n in enumerate(sizes):
      writer.add_scalar(f"cluster_size/{j}", n, 5 * epoch)
  writer.close()
  drawn = []
  monkeypatch.setattr(plots, "cluster_sizes", lambda *a: drawn.append(a) or plots.threshold(
      np.arange(2), np.arange(2), 1))
  text = build._training_section(str(tmp_path), str(tmp_path), steps_per_epoch=5)
  assert "cluster_sizes.png" in text and "only the smallest" not in text
  epochs, matrix = drawn[0]
  np.testing.assert_array_equal(epochs, [0, 1, 2])
  np.testing.assert_array_equal(matrix, sizes_ExN)  # cluster_size/10 after /9.
  assert os.path.exists(tmp_path / "cluster_sizes.png")


def test_relevance_of_multi_hot_labels_is_a_shared_label():
  np.testing.assert_array_equal(
      gallery.shares_label(np.array([0, 1, 1]), np.array([[1, 0, 0], [0, 0, 1], [1, 1, 0]])),
      [False, True, True])
  np.testing.assert_array_equal(gallery.shares_label(3, np.array([3, 1, 3])), [True, False, True])


def test_a_multi_label_feature_file_run_has_curves_and_says_it_has_no_images(tmp_path):
  workdir, _, _ = tiny_runs.features_run(str(tmp_path))
  page_path = build.write_report(workdir)
  text = _read(page_path)
  page = _parse(text)
  assert "there are no images" in text
  assert not any(src.startswith("gallery/") for src in page.images)
  assert {"pr_8.png", "precision_at_k_8.png", "bit_balance.png"} <= set(page.images)
  assert not os.path.exists(os.path.join(os.path.dirname(page_path), gallery.FOLDER))
  codes = _codes(workdir)
  db_ids = list(codes["database_ids"])
  assert len(page.rows) == gallery.NUM_QUERIES
  for row in page.rows:
    q = list(codes["query_ids"]).index(row["query"])
    for hit in row["hits"]:
      j = db_ids.index(int(hit["data-item"]))
      shared = bool(np.any(codes["query_labels"][q] & codes["database_labels"][j]))
      assert hit["data-relevant"] == str(int(shared))
  with open(os.path.join(os.path.dirname(page_path), "data.json")) as f:
    (curve,) = json.load(f)["curves"]["8"]
  assert curve["map"] == pytest.approx(metrics.mean_average_precision(
      codes["query_codes"], codes["database_codes"], codes["query_labels"],
      codes["database_labels"], topk=curve["topk"]), abs=1e-12)


def test_event_files_later_value_wins_and_a_cut_file_ends_cleanly(tmp_path):
  import tensorboardX  # pylint: disable=g-import-not-at-top
  for run, values in enumerate(([1.0, 2.0, 3.0], [20.0, 30.0])):  # A run, then its resumption.
    writer = tensorboardX.SummaryWriter(str(tmp_path), filename_suffix=f".{run}")
    for i, v in enumerate(values):
      writer.add_scalar("loss", v, i + 3 - len(values))
    writer.close()
  steps, values = events.read_scalars(str(tmp_path))["loss"]
  assert steps.tolist() == [0, 1, 2] and values.tolist() == [1.0, 20.0, 30.0]
  path = sorted(tmp_path.glob("events.out.tfevents.*"))[-1]
  path.write_bytes(path.read_bytes()[:-7])  # A killed run's half-written record.
  steps, values = events.read_scalars(str(tmp_path))["loss"]
  assert steps.tolist() == [0, 1, 2] and values.tolist() == [1.0, 20.0, 3.0]


def test_command_line_refuses_a_workdir_without_a_run(tmp_path):
  result = subprocess.run([sys.executable, "-m", "ucsh_jax.report", f"--workdir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert any(line.startswith(f"error: {tmp_path} holds no run record")
             for line in result.stderr.splitlines()), result.stderr[-2000:]
