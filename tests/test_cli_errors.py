"""Bad input at the command line ends in one `error:` line and status 2; a bug keeps its traceback.

Every case runs the real entry point in a subprocess (all started together, a few at a time),
on files the test makes: a missing, malformed or truncated feature file, impossible config
values, a malicious weights file, a corrupt image, a mistyped config field, a workdir that holds
another run or is in use, that is a file or lies under one, or that the user may not write; a
truncated codes file; query and database files that cannot be searched. After each refused train
start, the same command corrected (the bad override left out, or the good file given) runs on the
same workdir: a refused start leaves nothing that refuses the next one.
"""

import concurrent.futures
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys

from typing import Callable, List, NamedTuple, Optional

import numpy as np
import PIL.Image
import pytest

from test_pretrained import _Call
from test_pretrained import write_zip_pth
import tiny_runs
from ucsh_jax import run_record
from ucsh_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = [sys.executable, "-m", "ucsh_jax.main"]
SEARCH = [sys.executable, "-m", "ucsh_jax.search"]
REPORT = [sys.executable, "-m", "ucsh_jax.report"]
BASELINES = [sys.executable, "-m", "ucsh_jax.baselines"]
# Small enough that a corrected start trains in seconds (the refused ones stop before training).
DIGITS_TINY = ["--config.num_epochs=1", "--config.data.num_query=40", "--config.data.num_train=64",
               "--config.data.num_database=160", "--config.batch_size=16",
               "--config.num_clusters=4", "--config.model.decoder_hidden=16",
               "--config.eval.batch_size=64"]
FEATURES_TINY = ["--config.num_epochs=1", "--config.data.num_query=9", "--config.data.num_train=30",
                 "--config.batch_size=8", "--config.num_clusters=3", "--config.bits=8",
                 "--config.model.decoder_hidden=16", "--config.eval.batch_size=64"]


def _unprivileged(command):
  """`command` run without the power to write where the file permissions forbid it: as root
  (the tests' usual user) without CAP_DAC_OVERRIDE, otherwise as it is."""
  if os.geteuid() != 0:
    return command
  return ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override"] + command


def _read_only(folder):
  """Takes the write permission off `folder` and everything under it."""
  for directory, _, files in os.walk(folder):
    for name in files:
      os.chmod(os.path.join(directory, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
  for directory, _, _ in os.walk(folder, topdown=False):
    os.chmod(directory, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
  return str(folder)


def _trained_runs(tmp):
  """A tiny trained and encoded run on a feature file (12-d, multi-hot labels), and copies of
  it: read-only, and with its codes.npz cut short."""
  root = tmp / "trained"
  os.makedirs(root)
  workdir, features, labels = tiny_runs.features_run(str(root))
  cut = tmp / "cut_codes_run"
  shutil.copytree(workdir, cut)
  data = (cut / "codes.npz").read_bytes()
  (cut / "codes.npz").write_bytes(data[:len(data) // 2])  # Newer than the checkpoint.
  read_only = tmp / "read_only_run"
  shutil.copytree(workdir, read_only)
  return workdir, features, labels, str(cut), _read_only(read_only)


def _features(path, features, labels, **splits):
  np.savez(path, features=features, labels=labels, **splits)
  return str(path)


def _write_jpeg(path, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  PIL.Image.fromarray(pixels).save(path)


def _image_folder(root, corrupt=False, empty_class=False):
  for c in range(2):
    os.makedirs(root / f"class{c}")
    for i in range(20):
      _write_jpeg(root / f"class{c}" / f"{i:02d}.jpg", seed=20 * c + i)
  if corrupt:
    (root / "class1" / "07.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  if empty_class:
    os.makedirs(root / "class2")
  return str(root)


class Case(NamedTuple):
  command: List[str]
  expected: str  # Text the error line must contain.
  # A refused train start: the corrected command (run on the same workdir after `repair()`).
  corrected: Optional[List[str]] = None
  repair: Optional[Callable[[], None]] = None


def _replace(command, old, new):
  """`command` with the argument `old` replaced by `new` (or left out when `new` is None)."""
  assert old in command, (old, command)
  return [new if arg == old else arg for arg in command if arg != old or new is not None]


def _cases(tmp, trained):
  """name -> Case."""
  rng = np.random.default_rng(0)
  x = rng.random((60, 8)).astype(np.float32)
  y = np.arange(60) % 3
  nan = x.copy()
  nan[37, 2] = np.nan
  zero_row = x.copy()
  zero_row[12] = 0.0
  good = _features(tmp / "good.npz", x, y)
  cut_features = tmp / "cut.npz"
  cut_features.write_bytes(open(good, "rb").read()[:300])
  feats = f"--config={REPO}/configs/features.py"
  digits = f"--config={REPO}/configs/digits.py"
  tiny = f"--config={REPO}/configs/test.py"
  evil = tmp / "evil.pth"
  write_zip_pth(evil, payload=pickle.dumps(
      {"features.0.weight": _Call(os.system, f"touch {tmp / 'ran'}")}, protocol=2))

  busy = tmp / "busy"
  os.makedirs(busy)
  a_file = tmp / "a_file"
  a_file.write_text("not a folder")
  under = f"{a_file}/run"
  locked_folder = tmp / "locked_folder"
  os.makedirs(locked_folder / "workdir")
  _read_only(locked_folder)
  run, features, _, cut_codes_run, read_only_run = trained
  other_run = tmp / "other_run"
  shutil.copytree(run, other_run)  # An 8-bit run with its checkpoint.
  np.savez(tmp / "no_rows.npz", features=np.zeros((0, features.shape[1]), np.float32))
  np.savez(tmp / "queries.npz", features=features[:3])
  np.savez(tmp / "float_labels.npz", features=features[:3], labels=np.array([0.0, 1.5, 2.0]))
  (tmp / "cut_queries.npz").write_bytes((tmp / "queries.npz").read_bytes()[:200])
  images = _image_folder(tmp / "jpegs", corrupt=True)
  gap = _image_folder(tmp / "gap", empty_class=True)
  # The config of the trained feature run (tiny_runs.features_run).
  features_run = [feats, f"--config.data.path={os.path.dirname(run)}/data.npz",
                  "--config.data.num_query=20", "--config.data.num_train=32",
                  "--config.num_epochs=1", "--config.batch_size=16", "--config.eval.batch_size=32",
                  "--config.bits=8", "--config.num_clusters=4", "--config.model.decoder_hidden=16"]

  def workdir(name):
    return f"--workdir={tmp / 'runs' / name}"

  def feature_file(path, name):
    """A refused start on the feature file `path`, and its correction: the same command on
    the good file."""
    bad = f"--config.data.path={path}"
    command = MAIN + [feats, bad, *FEATURES_TINY, workdir(name)]
    return dict(command=command, corrected=_replace(command, bad, f"--config.data.path={good}"))

  def override(name, bad, config=digits, tiny_overrides=DIGITS_TINY):
    """A refused start with the override `bad`, and its correction: the same without it."""
    command = MAIN + [config, *tiny_overrides, bad, workdir(name)]
    return dict(command=command, corrected=_replace(command, bad, None))

  def repaired(command, repair):
    return dict(command=command, corrected=command, repair=repair)

  image_folder = [tiny, "--config.num_epochs=1", "--config.data.name=image_folder",
                  "--config.data.num_query=4", "--config.data.num_train=16",
                  "--config.data.num_database=-1"]
  return {
      "missing feature file": Case(**feature_file(f"{tmp}/absent.npz", "a"),
                                   expected="absent.npz"),
      "length mismatch": Case(**feature_file(_features(tmp / "short.npz", x, y[:59]), "b"),
                              expected="different lengths"),
      "NaN in a feature row": Case(**feature_file(_features(tmp / "nan.npz", nan, y), "c"),
                                   expected="row 37 holds NaN"),
      "3-D features": Case(**feature_file(_features(tmp / "cube.npz", x.reshape(60, 2, 4), y),
                                          "d"), expected="(n, d)"),
      "multi-hot labels not 0/1": Case(**feature_file(_features(
          tmp / "multi.npz", x, np.full((60, 3), 2)), "e"), expected="only 0 and 1"),
      "query index out of range": Case(**feature_file(_features(
          tmp / "range.npz", x, y, query_idx=np.array([0, 99]), database_idx=np.arange(2, 60),
          train_idx=np.arange(2, 40)), "f"), expected="query indices span [0, 99]"),
      "truncated feature file": Case(**feature_file(cut_features, "cut"),
                                     expected="cut short, damaged"),
      "all-zero feature row": Case(**feature_file(_features(tmp / "zero.npz", zero_row, y),
                                                  "zero"),
                                   expected="'features' row 12 is all zeros"),
      "bits=0": Case(**override("g", "--config.bits=0"), expected="config.bits=0"),
      "bits not a multiple of 8": Case(**override("bits12", "--config.bits=12"),
                                       expected="config.bits=12 must be a multiple of 8"),
      "more bits than ITQ can give": Case(
          **override("bits1024", "--config.bits=1024"),
          expected="config.bits=1024 with config.model.hash_init='itq': ITQ needs at most as "
                   "many bits as the 192 dimensions"),
      "training set smaller than the batch": Case(
          **override("small_train", "--config.data.num_train=8"),
          expected="the training set has 8 images, fewer than config.batch_size=16"),
      "unknown ablation": Case(**override("h", "--config.ablation=Q"),
                               expected="config.ablation='Q'"),
      "batch not divisible by the devices": Case(**override("i", "--config.batch_size=12"),
                                                 expected="multiple of the 8 devices"),
      "malicious pickle": Case(**override("j", f"--config.model.pretrained={evil}", tiny,
                                          ["--config.num_epochs=1"]),
                               expected="refusing to load global"),
      # Found when training reads it, after the run started (and was recorded), before it
      # saved a checkpoint: the corrected start replaces the record.
      "corrupt image": Case(**repaired(
          MAIN + image_folder + [f"--config.data.path={images}", workdir("k")],
          lambda: _write_jpeg(os.path.join(images, "class1", "07.jpg"))), expected="07.jpg"),
      "empty class folder": Case(**repaired(
          MAIN + image_folder + [f"--config.data.path={gap}", workdir("l")],
          lambda: os.rmdir(os.path.join(gap, "class2"))), expected="class2 holds no images"),
      "mistyped config field": Case(MAIN + [digits, "--config.bitz=32", workdir("m")],
                                    "unknown config field 'bitz'"),
      "missing config file": Case(MAIN + [f"--config={tmp}/nope.py", workdir("n")], "nope.py"),
      "unknown flag": Case(MAIN + [digits, "--wrokdir=x", workdir("o")], "wrokdir"),
      "workdir of another run": Case(
          MAIN + _replace(features_run, "--config.bits=8", "--config.bits=16")
          + [f"--workdir={other_run}"], "bits: 8 -> 16"),
      "workdir in use": Case(MAIN + [digits, f"--workdir={busy}"], "is in use by"),
      "eval without a checkpoint": Case(MAIN + [digits, "--mode=eval", workdir("p")],
                                        "no checkpoint"),
      "baselines bits not integers": Case(BASELINES + [digits, "--bits=16,x", workdir("q")],
                                          "expected integers"),
      "baselines bits over the ITQ limit": Case(
          BASELINES + [digits, "--bits=16,256", workdir("r")],
          "--bits=16,256: ITQ needs at most as many bits as the 192 dimensions"),
      "tables of a missing folder": Case([sys.executable, "-m", "ucsh_jax.tables",
                                          str(tmp / "nowhere")], "nowhere is not a folder"),
      "train: workdir is a file": Case(MAIN + [digits, f"--workdir={a_file}"],
                                       f"workdir {a_file} is a file, not a folder"),
      "encode: workdir is a file": Case(MAIN + [digits, "--mode=encode", f"--workdir={a_file}"],
                                        f"workdir {a_file} is a file, not a folder"),
      "search: workdir is a file": Case(SEARCH + [f"--workdir={a_file}", "--query_index=0"],
                                        f"workdir {a_file} is a file, not a folder"),
      "report: workdir is a file": Case(REPORT + [f"--workdir={a_file}"],
                                        f"workdir {a_file} is a file, not a folder"),
      "eval: workdir under a file": Case(MAIN + [digits, "--mode=eval", f"--workdir={under}"],
                                         f"cannot be a folder: {a_file} is a file"),
      "features: workdir under a file": Case(
          MAIN + [digits, "--mode=features", f"--workdir={under}"],
          f"cannot be a folder: {a_file} is a file"),
      "baselines: workdir under a file": Case(BASELINES + [digits, f"--workdir={under}"],
                                              f"cannot be a folder: {a_file} is a file"),
      "search: workdir under a file": Case(SEARCH + [f"--workdir={under}", "--query_index=0"],
                                           f"cannot be a folder: {a_file} is a file"),
      "report: workdir under a file": Case(REPORT + [f"--workdir={under}"],
                                           f"cannot be a folder: {a_file} is a file"),
      "train: new workdir in a read-only folder": Case(
          _unprivileged(MAIN + [digits, f"--workdir={locked_folder}/new"]),
          f"cannot create the workdir {locked_folder}/new: Permission denied"),
      "train: read-only workdir": Case(
          _unprivileged(MAIN + [digits, f"--workdir={locked_folder}/workdir"]),
          f"cannot write in the workdir {locked_folder}/workdir: Permission denied"),
      "encode: read-only run": Case(
          _unprivileged(MAIN + features_run + ["--mode=encode", f"--workdir={read_only_run}"]),
          f"cannot write in the workdir {read_only_run}"),
      "report: read-only run": Case(_unprivileged(REPORT + [f"--workdir={read_only_run}"]),
                                    f"cannot write in the workdir {read_only_run}"),
      "search: truncated codes.npz": Case(
          SEARCH + [f"--workdir={cut_codes_run}", "--query_index=0"],
          f"cannot read the codes file {cut_codes_run}/codes.npz: it is not a whole .npz"),
      "report: truncated codes.npz": Case(
          REPORT + [f"--workdir={cut_codes_run}"],
          f"cannot read the codes file {cut_codes_run}/codes.npz: it is not a whole .npz"),
      "search: query file with no rows": Case(
          SEARCH + [f"--workdir={run}", f"--query={tmp}/no_rows.npz"],
          "no_rows.npz holds no feature vectors ('features' has shape (0, 12))"),
      "search: database file with no rows": Case(
          SEARCH + [f"--workdir={run}", f"--query={tmp}/queries.npz",
                    f"--database={tmp}/no_rows.npz"],
          "no_rows.npz holds no feature vectors"),
      "search: float query labels": Case(
          SEARCH + [f"--workdir={run}", f"--query={tmp}/float_labels.npz"],
          "float_labels.npz: 'labels' must be int (n,) or multi-hot (n, c), got float64"),
      "search: truncated query file": Case(
          SEARCH + [f"--workdir={run}", f"--query={tmp}/cut_queries.npz"],
          "cut_queries.npz: it is not a whole .npz"),
  }


def _run(command, cwd):
  return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=REPO))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
  """(folder, name -> Case) with every file the cases need."""
  tmp = tmp_path_factory.mktemp("bad_input")
  return tmp, _cases(tmp, _trained_runs(tmp))


@pytest.fixture(scope="module")
def outcomes(cases):
  """name -> (expected text, CompletedProcess), every case run once."""
  tmp, cases = cases
  lock = workdir_lock.WorkdirLock(str(tmp / "busy"), "a test holding the lock")
  lock.acquire()
  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      done = {name: pool.submit(_run, case.command, tmp) for name, case in cases.items()}
      results = {name: (cases[name].expected, future.result()) for name, future in done.items()}
  finally:
    lock.release()
  assert not (tmp / "ran").exists(), "the malicious pickle ran its code"
  return results


def _workdir_of(command):
  return next(arg.split("=", 1)[1] for arg in command if arg.startswith("--workdir="))


@pytest.fixture(scope="module")
def corrections(cases, outcomes):
  """name -> (whether the refused start left a run record, the corrected command's
  CompletedProcess, its workdir), for each refused train start."""
  tmp, cases = cases
  refused = {name: case for name, case in cases.items() if case.corrected is not None}
  left = {name: os.path.exists(run_record.record_path(_workdir_of(case.command)))
          for name, case in refused.items()}
  for case in refused.values():
    if case.repair is not None:
      case.repair()
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    done = {name: pool.submit(_run, case.corrected, tmp) for name, case in refused.items()}
    return {name: (left[name], future.result(), _workdir_of(refused[name].corrected))
            for name, future in done.items()}


CASE_NAMES = ["missing feature file", "length mismatch", "NaN in a feature row", "3-D features",
              "multi-hot labels not 0/1", "query index out of range", "truncated feature file",
              "all-zero feature row", "bits=0", "bits not a multiple of 8",
              "more bits than ITQ can give", "training set smaller than the batch",
              "unknown ablation", "batch not divisible by the devices", "malicious pickle",
              "corrupt image", "empty class folder", "mistyped config field",
              "missing config file", "unknown flag", "workdir of another run", "workdir in use",
              "eval without a checkpoint", "baselines bits not integers",
              "baselines bits over the ITQ limit", "tables of a missing folder",
              "train: workdir is a file", "encode: workdir is a file",
              "search: workdir is a file", "report: workdir is a file",
              "eval: workdir under a file", "features: workdir under a file",
              "baselines: workdir under a file", "search: workdir under a file",
              "report: workdir under a file", "train: new workdir in a read-only folder",
              "train: read-only workdir", "encode: read-only run", "report: read-only run",
              "search: truncated codes.npz", "report: truncated codes.npz",
              "search: query file with no rows", "search: database file with no rows",
              "search: float query labels", "search: truncated query file"]
# The train starts refused for a config value or for their data.
CORRECTED_NAMES = ["missing feature file", "length mismatch", "NaN in a feature row",
                   "3-D features", "multi-hot labels not 0/1", "query index out of range",
                   "truncated feature file", "all-zero feature row", "bits=0",
                   "bits not a multiple of 8", "more bits than ITQ can give",
                   "training set smaller than the batch", "unknown ablation",
                   "batch not divisible by the devices", "malicious pickle",
                   "empty class folder", "corrupt image"]
# The train starts that began (and were recorded) before they failed; none saved a checkpoint.
STARTED_NAMES = ["corrupt image"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_error_line_and_status_2(outcomes, name):
  expected, result = outcomes[name]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1, result.stderr[-3000:]
  assert expected in errors[0], errors[0]


def test_every_case_is_checked(cases, outcomes):
  assert sorted(outcomes) == sorted(CASE_NAMES)
  assert sorted(n for n, case in cases[1].items() if case.corrected) == sorted(CORRECTED_NAMES)


@pytest.mark.parametrize("name", CORRECTED_NAMES)
def test_a_refused_start_leaves_no_record_and_the_corrected_command_runs_there(corrections, name):
  left_a_record, result, workdir = corrections[name]
  assert left_a_record == (name in STARTED_NAMES), run_record.record_path(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, "results.json"))
  with open(run_record.record_path(workdir)) as f:
    assert json.load(f)["data_fingerprint"]  # Recorded with the run.


def test_a_read_only_run_is_searched_with_another_collection_without_caching_it(cases):
  tmp, _ = cases
  read_only_run = str(tmp / "read_only_run")
  result = _run(_unprivileged(SEARCH + [f"--workdir={read_only_run}",
                                        f"--query={tmp}/queries.npz",
                                        f"--database={tmp}/queries.npz", "--json"]), tmp)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "not caching the index of" in result.stderr
  found = json.loads(result.stdout)
  assert [answer["results"][0]["distance"] for answer in found] == [0, 0, 0]
  assert not os.path.exists(os.path.join(read_only_run, "search_cache"))


def test_a_mistyped_field_gets_the_suggestion_as_its_hint(outcomes):
  _, result = outcomes["mistyped config field"]
  assert 'hint: Did you mean "bits" instead of "bitz"?' in result.stderr.splitlines()


def _run_snippet(body, *args):
  program = ("from ucsh_jax import cli\nfrom ucsh_jax import errors\n"
             f"def main(argv):\n  {body}\ncli.run(main)\n")
  return subprocess.run([sys.executable, "-c", program, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120)


def test_an_internal_error_keeps_its_traceback():
  result = _run_snippet("raise ZeroDivisionError('a bug')")
  assert result.returncode not in (0, 2)
  assert "Traceback" in result.stderr and "ZeroDivisionError: a bug" in result.stderr
  assert not any(line.startswith("error: ") for line in result.stderr.splitlines())


def test_a_user_error_wrapped_by_a_library_is_still_clean():
  result = _run_snippet("raise RuntimeError('worker failed') from errors.UserError('bad jpeg')")
  assert result.returncode == 2 and result.stderr.strip() == "error: bad jpeg"


def test_verbose_shows_the_traceback_of_a_user_error():
  result = _run_snippet("raise errors.UserError('bad input')", "--verbose")
  assert result.returncode not in (0, 2)
  assert "Traceback" in result.stderr and "UserError: bad input" in result.stderr


def test_arguments_other_than_flags_are_refused():
  result = _run_snippet("raise ZeroDivisionError('main must not run')", "stray")
  assert result.returncode == 2 and result.stderr.strip() == "error: unexpected arguments: stray"
