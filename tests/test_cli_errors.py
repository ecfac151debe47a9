"""Bad input at the command line ends in one `error:` line and status 2; a bug keeps its traceback.

Every case runs the real entry point in a subprocess (all started together, a few at a time),
on files the test makes: a missing or malformed feature file, impossible config values, a
malicious weights file, a corrupt image, a mistyped config field, a workdir that holds another
run or is in use.
"""

import concurrent.futures
import os
import pickle
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from configs import digits as digits_config
from test_pretrained import _Call
from test_pretrained import write_zip_pth
from ucsh_jax import run_record
from ucsh_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = [sys.executable, "-m", "ucsh_jax.main"]


def _features(path, features, labels, **splits):
  np.savez(path, features=features, labels=labels, **splits)
  return str(path)


def _image_folder(root, corrupt=False, empty_class=False):
  rng = np.random.default_rng(0)
  for c in range(2):
    os.makedirs(root / f"class{c}")
    for i in range(20):
      pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
      PIL.Image.fromarray(pixels).save(root / f"class{c}" / f"{i:02d}.jpg")
  if corrupt:
    (root / "class1" / "07.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  if empty_class:
    os.makedirs(root / "class2")
  return str(root)


def _cases(tmp):
  """name -> (command, text the error line must contain)."""
  rng = np.random.default_rng(0)
  x = rng.random((60, 8)).astype(np.float32)
  y = np.arange(60) % 3
  nan = x.copy()
  nan[37, 2] = np.nan
  feats = f"--config={REPO}/configs/features.py"
  digits = f"--config={REPO}/configs/digits.py"
  tiny = f"--config={REPO}/configs/test.py"
  evil = tmp / "evil.pth"
  write_zip_pth(evil, payload=pickle.dumps(
      {"features.0.weight": _Call(os.system, f"touch {tmp / 'ran'}")}, protocol=2))

  other_run = tmp / "other_run"
  config = digits_config.get_config()
  run_record.check_or_write(config, str(other_run), None)  # A 16-bit run's record.
  busy = tmp / "busy"
  os.makedirs(busy)

  def workdir(name):
    return f"--workdir={tmp / 'runs' / name}"

  return {
      "missing feature file": (MAIN + [feats, f"--config.data.path={tmp}/absent.npz",
                                       workdir("a")], "absent.npz"),
      "length mismatch": (MAIN + [feats, "--config.data.path=" + _features(
          tmp / "short.npz", x, y[:59]), workdir("b")], "different lengths"),
      "NaN in a feature row": (MAIN + [feats, "--config.data.path=" + _features(
          tmp / "nan.npz", nan, y), workdir("c")], "row 37 holds NaN"),
      "3-D features": (MAIN + [feats, "--config.data.path=" + _features(
          tmp / "cube.npz", x.reshape(60, 2, 4), y), workdir("d")], "(n, d)"),
      "multi-hot labels not 0/1": (MAIN + [feats, "--config.data.path=" + _features(
          tmp / "multi.npz", x, np.full((60, 3), 2)), workdir("e")], "only 0 and 1"),
      "query index out of range": (MAIN + [feats, "--config.data.path=" + _features(
          tmp / "range.npz", x, y, query_idx=np.array([0, 99]), database_idx=np.arange(2, 60),
          train_idx=np.arange(2, 40)), workdir("f")], "query indices span [0, 99]"),
      "bits=0": (MAIN + [digits, "--config.bits=0", workdir("g")], "config.bits=0"),
      "unknown ablation": (MAIN + [digits, "--config.ablation=Q", workdir("h")],
                           "config.ablation='Q'"),
      "batch not divisible by the devices": (MAIN + [digits, "--config.batch_size=12",
                                                     workdir("i")], "multiple of the 8 devices"),
      "malicious pickle": (MAIN + [tiny, f"--config.model.pretrained={evil}", workdir("j")],
                           "refusing to load global"),
      "corrupt image": (MAIN + [tiny, "--config.data.name=image_folder",
                                "--config.data.path=" + _image_folder(tmp / "jpegs", corrupt=True),
                                "--config.data.num_query=4", "--config.data.num_train=16",
                                "--config.data.num_database=-1", workdir("k")], "07.jpg"),
      "empty class folder": (MAIN + [tiny, "--config.data.name=image_folder",
                                     "--config.data.path=" + _image_folder(tmp / "gap",
                                                                           empty_class=True),
                                     workdir("l")], "class2 holds no images"),
      "mistyped config field": (MAIN + [digits, "--config.bitz=32", workdir("m")],
                                "unknown config field 'bitz'"),
      "missing config file": (MAIN + [f"--config={tmp}/nope.py", workdir("n")], "nope.py"),
      "unknown flag": (MAIN + [digits, "--wrokdir=x", workdir("o")], "wrokdir"),
      "workdir of another run": (MAIN + [digits, "--config.bits=32", f"--workdir={other_run}"],
                                 "bits: 16 -> 32"),
      "workdir in use": (MAIN + [digits, f"--workdir={busy}"], "is in use by"),
      "eval without a checkpoint": (MAIN + [digits, "--mode=eval", workdir("p")],
                                    "no checkpoint"),
      "baselines bits not integers": ([sys.executable, "-m", "ucsh_jax.baselines", digits,
                                       "--bits=16,x", workdir("q")], "expected integers"),
      "tables of a missing folder": ([sys.executable, "-m", "ucsh_jax.tables",
                                      str(tmp / "nowhere")], "nowhere is not a folder"),
  }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """name -> (expected text, CompletedProcess), every case run once."""
  tmp = tmp_path_factory.mktemp("bad_input")
  cases = _cases(tmp)
  lock = workdir_lock.WorkdirLock(str(tmp / "busy"), "a test holding the lock")
  lock.acquire()
  try:
    def run(command):
      return subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=REPO))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      done = {name: pool.submit(run, command) for name, (command, _) in cases.items()}
      results = {name: (cases[name][1], future.result()) for name, future in done.items()}
  finally:
    lock.release()
  assert not (tmp / "ran").exists(), "the malicious pickle ran its code"
  return results


CASE_NAMES = ["missing feature file", "length mismatch", "NaN in a feature row", "3-D features",
              "multi-hot labels not 0/1", "query index out of range", "bits=0",
              "unknown ablation", "batch not divisible by the devices", "malicious pickle",
              "corrupt image", "empty class folder", "mistyped config field",
              "missing config file", "unknown flag", "workdir of another run", "workdir in use",
              "eval without a checkpoint", "baselines bits not integers",
              "tables of a missing folder"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_error_line_and_status_2(outcomes, name):
  expected, result = outcomes[name]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert len(errors) == 1, result.stderr[-3000:]
  assert expected in errors[0], errors[0]


def test_every_case_is_checked(outcomes):
  assert sorted(outcomes) == sorted(CASE_NAMES)


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
