"""The README's commands, run exactly as written, in order, from a copy of the repository root.

The rule: a README command is a line of a ```bash block (joined with its `\\` continuation lines)
that begins with `python -m ucsh_jax`. Each one runs here unless an argument names an absolute
path (`/data/...`, `/weights/...`, `/shared/...`: files a user brings, which no test can have);
those are listed by `test_excluded_commands_are_only_the_ones_with_absolute_paths`. Inputs a
command reads from a relative path that the repository does not ship (`downloads/` for the
CIFAR-10 archive, `photos/` for an image folder) are made by the test in the real formats
before the command runs. Every command that runs must have a check of the outputs the README
promises (`CHECKS`): a documented offline command without one fails the test.
"""

import io
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import numpy as np
import PIL.Image
import pytest

import notop_weights
import retrieval_reference as reference
from ucsh_jax.data import cifar10

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "python -m ucsh_jax"
SERVER_MODULES = ("ucsh_jax.serve",)


def readme_commands(text):
  """Every README command (see the module docstring), continuation lines joined, in order."""
  commands, in_bash, pending = [], False, ""
  for line in text.splitlines():
    if line.startswith("```"):
      in_bash = line.strip() == "```bash" and not in_bash
      continue
    if not in_bash:
      continue
    line = pending + line.strip()
    if line.endswith("\\"):
      pending = line[:-1].rstrip() + " "
      continue
    pending = ""
    if line.startswith(PREFIX):
      commands.append(line)
  return commands


def names_absolute_path(command):
  return any(re.match(r"^(--[\w.]+=)?[/~]", arg) for arg in shlex.split(command)[1:])


with open(os.path.join(REPO, "README.md")) as _f:
  ALL_COMMANDS = readme_commands(_f.read())
RUNNABLE = [c for c in ALL_COMMANDS if not names_absolute_path(c)]
EXCLUDED = [c for c in ALL_COMMANDS if names_absolute_path(c)]


def _args(command):
  """{flag name: value} of a command's `--name=value` arguments."""
  return dict(a[2:].split("=", 1) for a in shlex.split(command) if a.startswith("--") and "=" in a)


def _module(command):
  return shlex.split(command)[2]


# ---- Inputs the test makes for commands that read them (real formats, small). ----

def _make_cifar_archive(path, per_class=70, seed=0):
  """The official cifar-10-python.tar.gz layout with per_class images of each class."""
  rng = np.random.default_rng(seed)
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  labels = np.arange(per_class * 10) % 10
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w:gz") as tar:
    def add(name, payload):
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))

    for name, part in zip(names, np.array_split(labels, len(names))):
      flat = rng.integers(0, 256, (len(part), 3072), dtype=np.uint8)
      add(name, pickle.dumps({b"labels": part.tolist(), b"data": flat}, protocol=2))
    add("batches.meta", pickle.dumps(
        {b"label_names": [n.encode() for n in cifar10.LABEL_NAMES]}, protocol=2))


def _make_photos(root, per_class=40, seed=0):
  """root/<class>/*.jpg: three classes of differently coloured noise images."""
  rng = np.random.default_rng(seed)
  for c, name in enumerate(("cats", "dogs", "owls")):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      pixels = rng.integers(0, 120, (40, 48, 3)) + 120 * (np.arange(3) == c)
      PIL.Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, name, f"{i:03d}.jpg"))


# Folders of a user's own inputs that the README tells them to make (git ignores them): never
# copied from the checkout, whatever it holds; the test makes its own (make_inputs).
INPUT_FOLDERS = ("downloads", "photos")


def make_inputs(command, root):
  """Makes the relative inputs that `command` reads and the repository does not ship."""
  for value in _args(command).values():
    first = value.split("/")[0]
    if first == "downloads" and not os.path.exists(
        os.path.join(root, "downloads", "cifar-10-python.tar.gz")):
      _make_cifar_archive(os.path.join(root, "downloads", "cifar-10-python.tar.gz"))
    if first == "photos" and not os.path.exists(os.path.join(root, "photos")):
      _make_photos(os.path.join(root, "photos"))
    if value.endswith("_notop.h5") and not os.path.exists(os.path.join(root, value)):
      # A full-width VGG16 conv base (random weights) in the Keras notop layout.
      os.makedirs(os.path.dirname(os.path.join(root, value)), exist_ok=True)
      notop_weights.write_notop_h5(os.path.join(root, value), notop_weights.notop_layers(width=1))


# ---- What each command promises. ----

# How far above chance (the MAP of random codes) every MAP of the README's runs must be.
# Measured: UCSH 0.640 on the digits against 0.104 for random codes (std 0.0004 over seeds) and
# 0.058 with the query codes negated; 1.000 on the photos against 0.367 (std 0.011); the
# digits baselines 0.360 (SpH, 16 bits) to 0.677 (ITQ, 64 bits) against 0.104.
CHANCE_MARGIN = 0.2
# How far above LSH on the same inputs and code length the trained run's MAP must be.
LSH_MARGIN = 0.1


def _check_map(value, query_codes, db_codes, query_labels, db_labels, topk, chance=None):
  """`value` is the NumPy reference MAP of the codes and at least CHANCE_MARGIN above chance
  (`reference.chance_map` of the labels at the codes' length, unless given)."""
  assert value == pytest.approx(reference.mean_average_precision(
      query_codes, db_codes, query_labels, db_labels, topk), rel=1e-12)
  if chance is None:
    chance = reference.chance_map(query_labels, db_labels, query_codes.shape[1], topk)
  assert value > chance + CHANCE_MARGIN, (value, chance)


RESULT_FIELDS = ("dataset", "bits", "method", "ablation", "topk", "map", "precision_at_k",
                 "precision_within_radius_2", "num_query", "num_database", "num_train", "epochs",
                 "steps", "elapsed_s")


def _load_json(path):
  with open(path) as f:
    return json.load(f)


def check_train(command, root, result):
  workdir = os.path.join(root, _args(command)["workdir"])
  results = _load_json(os.path.join(workdir, "results.json"))
  assert sorted(results) == sorted(RESULT_FIELDS)
  last = [line for line in result.stderr.splitlines() if "MAP@" in line][-1]
  match = re.search(r"MAP@(\w+) = (\d\.\d{4}) \((\d+) queries, (\d+) database items\)$", last)
  assert match, last
  assert float(match.group(2)) == pytest.approx(results["map"], abs=5e-5)
  assert int(match.group(3)) == results["num_query"]
  assert int(match.group(4)) == results["num_database"]
  assert os.path.exists(os.path.join(workdir, "run.json"))


def check_eval(command, root, result):
  del result
  workdir = os.path.join(root, _args(command)["workdir"])
  scores = _load_json(os.path.join(workdir, "eval_results.json"))
  assert scores["map"] == pytest.approx(_load_json(os.path.join(workdir, "results.json"))["map"])


def check_encode(command, root, result):
  check_eval(command, root, result)
  workdir = os.path.join(root, _args(command)["workdir"])
  results = _load_json(os.path.join(workdir, "results.json"))
  with np.load(os.path.join(workdir, "codes.npz")) as codes:
    assert {"query_codes", "database_codes", "query_labels", "database_labels", "query_ids",
            "database_ids"} <= set(codes.files)
    assert set(np.unique(codes["database_codes"])) <= {-1, 1}
    _check_map(results["map"], codes["query_codes"], codes["database_codes"],
               codes["query_labels"], codes["database_labels"], results["topk"])


def check_features(command, root, result):
  del result
  workdir = os.path.join(root, _args(command)["workdir"])
  out = _args(command).get("output") or os.path.join(workdir, "features.npz")
  with np.load(os.path.join(root, out)) as saved:
    assert {"features", "labels", "query_idx", "database_idx", "train_idx"} <= set(saved.files)
    assert np.isfinite(saved["features"]).all()


def check_baselines(command, root, result):
  workdir = os.path.join(root, _args(command)["workdir"])
  summary = _load_json(os.path.join(workdir, "baselines.json"))
  with np.load(os.path.join(workdir, "baselines_codes.npz")) as npz:
    codes = dict(npz)
  labels = codes["query_labels"], codes["database_labels"]
  for bits in summary["bits"]:
    chance = reference.chance_map(*labels, bits, summary["topk"])
    for method in summary["methods"]:
      _check_map(summary["map"][method][str(bits)], codes[f"{method}_{bits}_query_codes"],
                 codes[f"{method}_{bits}_database_codes"], *labels, summary["topk"], chance)
  assert "| ITQ |" in result.stdout
  # The main job's point: at its code length UCSH is far above random projections (measured
  # on the digits: 0.640 against LSH's 0.366, and 0.366-0.380 for LSH over seeds).
  if os.path.exists(os.path.join(workdir, "run.json")):  # Next to a UCSH run.
    results = _load_json(os.path.join(workdir, "results.json"))
    lsh = summary["map"]["lsh"][str(results["bits"])]
    assert results["map"] > lsh + LSH_MARGIN, (results["map"], lsh)


def check_prepare(command, root, result):
  args = _args(command)
  workdir = os.path.join(root, args["workdir"])
  assert f"split files in {workdir}/splits" in result.stdout, result.stdout
  for name in ("query", "database", "train"):
    assert os.path.exists(os.path.join(workdir, "splits", f"{name}.npy"))
  # The prepared records go to the command's own data_dir, never to the user's default one.
  assert os.path.isdir(os.path.join(root, args["config.data.data_dir"], "ucsh_cifar10"))
  assert f"prepared from {os.path.join(root, args['config.data.manual_dir'])}" in result.stdout


def check_tables(command, root, result):
  folder = os.path.join(root, shlex.split(command)[3])
  assert os.path.exists(os.path.join(folder, "results.md"))
  assert "Table 1." in result.stdout


def check_search(command, root, result):
  del root
  topk = int(_args(command).get("topk", 10))
  if "--json" in shlex.split(command):
    answers = json.loads(result.stdout)
    assert answers and all(len(a["results"]) == topk for a in answers)
    for answer in answers:
      distances = [r["distance"] for r in answer["results"]]
      assert distances == sorted(distances)
      assert all(set(r) == {"id", "distance", "label", "path"} for r in answer["results"])
  else:
    assert result.stdout.strip(), "search printed nothing"


def check_report(command, root, result):
  del result
  workdir = os.path.join(root, _args(command)["workdir"])
  page = os.path.join(workdir, "report", "index.html")
  with open(page) as f:
    html = f.read()
  for src in re.findall(r'src="([^"]+\.png)"', html):
    assert os.path.exists(os.path.join(workdir, "report", src)), src


def check_serve(command, root, port):
  del command, root
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
    assert response.status == 200
    assert b"<html" in response.read().lower()


def check_for(command):
  """The check of a command's promised outputs, or None if the test knows none."""
  module, args = _module(command), _args(command)
  if module == "ucsh_jax.main":
    return {"train": check_train, "eval": check_eval, "encode": check_encode,
            "features": check_features}.get(args.get("mode", "train"))
  return {"ucsh_jax.baselines": check_baselines, "ucsh_jax.data.prepare": check_prepare,
          "ucsh_jax.tables": check_tables, "ucsh_jax.search": check_search,
          "ucsh_jax.report": check_report, "ucsh_jax.serve": check_serve}.get(module)


# ---- Running them. ----

def _copy_repository(dest, repo=REPO):
  """The files a fresh clone has (tracked, plus new files git does not ignore), less anything
  under INPUT_FOLDERS (a user's own photos/ or downloads/ never feed the test)."""
  listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                          cwd=repo, capture_output=True, text=True, check=True).stdout
  for name in listed.splitlines():
    if name.split("/")[0] in INPUT_FOLDERS:
      continue
    source = os.path.join(repo, name)
    if os.path.isfile(source):
      os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
      shutil.copy2(source, os.path.join(dest, name))


def _user_environment(home):
  """A newcomer's environment: one CPU device, an empty home, the venv's python on PATH."""
  env = dict(os.environ, HOME=home,
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                            env.get("XLA_FLAGS", "")).strip()
  env.pop("PYTHONPATH", None)
  return env


def _serve(command, root, env):
  port = int(_args(command).get("port", 8765))
  server = subprocess.Popen(["bash", "-c", "exec " + command], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
  try:
    deadline = time.monotonic() + 240
    while True:
      assert server.poll() is None, server.communicate()[1][-3000:]
      try:
        check_serve(command, root, port)
        return
      except (urllib.error.URLError, ConnectionError):
        assert time.monotonic() < deadline, "the server did not answer within 240 s"
        time.sleep(0.5)
  finally:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=60)


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
  """{command: CompletedProcess (None for a server)}, every runnable command run in order."""
  root = str(tmp_path_factory.mktemp("clone"))
  _copy_repository(root)
  assert not any(os.path.exists(os.path.join(root, f)) for f in INPUT_FOLDERS)
  env = _user_environment(str(tmp_path_factory.mktemp("home")))
  outcomes = {}
  for command in RUNNABLE:
    make_inputs(command, root)
    if _module(command) in SERVER_MODULES:
      _serve(command, root, env)
      outcomes[command] = (root, None)
      continue
    result = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stderr[-4000:]}"
    outcomes[command] = (root, result)
  return outcomes


def test_the_readme_documents_the_main_job_and_its_modes():
  modes = {_args(c).get("mode", "train") for c in RUNNABLE if _module(c) == "ucsh_jax.main"}
  assert {"train", "eval", "encode"} <= modes
  assert f"{PREFIX}.main --config=configs/digits.py --workdir=runs/digits" in RUNNABLE
  assert any(_module(c) == "ucsh_jax.baselines" for c in RUNNABLE)
  assert any(_module(c) == "ucsh_jax.data.prepare" for c in RUNNABLE)


def test_a_users_own_photos_and_downloads_are_ignored_and_never_copied(tmp_path):
  # The README's input folders are ignored by git in this repository...
  ignored = subprocess.run(["git", "check-ignore", "photos/cats/000.jpg",
                            "downloads/cifar-10-python.tar.gz"], cwd=REPO, capture_output=True,
                           text=True)
  assert ignored.stdout.split() == ["photos/cats/000.jpg", "downloads/cifar-10-python.tar.gz"]
  # ...and the copy leaves them out even where git would list them (tracked, or not ignored).
  checkout, dest = tmp_path / "checkout", tmp_path / "copy"
  for name in ("README.md", "photos/cats/000.jpg", "downloads/cifar-10-python.tar.gz",
               "downloads_notes.txt", "tests/photos/keep.txt"):
    os.makedirs(os.path.dirname(checkout / name), exist_ok=True)
    (checkout / name).write_text(name)
  subprocess.run(["git", "init", "-q"], cwd=checkout, check=True)
  subprocess.run(["git", "add", "README.md", "photos"], cwd=checkout, check=True)
  _copy_repository(str(dest), repo=str(checkout))
  copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
  assert copied == ["README.md", "downloads_notes.txt", "tests/photos/keep.txt"]
  # The test's own inputs are made in the copy.
  make_inputs("python -m ucsh_jax.main --config.data.path=photos", str(dest))
  assert sorted(os.listdir(dest / "photos")) == ["cats", "dogs", "owls"]


def test_every_runnable_command_has_a_check():
  assert not [c for c in RUNNABLE if check_for(c) is None]


def test_excluded_commands_are_only_the_ones_with_absolute_paths():
  print("\nExcluded (they name files a user brings):\n  " + "\n  ".join(EXCLUDED))
  assert all(names_absolute_path(c) for c in EXCLUDED)
  assert len(RUNNABLE) + len(EXCLUDED) == len(ALL_COMMANDS)


@pytest.mark.parametrize("command", RUNNABLE)
def test_readme_command_runs_as_written(readme_runs, command):
  root, result = readme_runs[command]
  if result is not None:  # A server was checked while it ran.
    check_for(command)(command, root, result)
