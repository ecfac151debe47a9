"""The run's record of itself: `WORKDIR/run.json` holds the resolved config it was started with.

  {"format": 1, "config": {...}, "config_file": "/abs/configs/digits.py",
   "weights": {"pretrained": "...", "file": "/abs/vgg16.pth" or null, "format": "torch_zip"},
   "preprocessing": {"mean": [...], "std": [...], "channel_order": "RGB", "pixel_range": 1.0}
                    or null (feature files), "created": "2026-12-01T21:30:00Z",
   "data_fingerprint": "sha256:..."}

Written when a run starts in a workdir without one: by `main` once the config validated and the
data loaded (`train.train_and_evaluate`'s `started`), so that a start refused for a config value
or for its data leaves no record to refuse the corrected command. A later run on the same
workdir must agree with it on every field that shapes the model, the optimiser or the splits
(`check`); only the fields in MAY_CHANGE may differ, and its data must have the recorded
fingerprint (`check_data`; a record written before fingerprints gets one from its next start).
A train start in a workdir with no finished checkpoint continues nothing and `write`s a new
record over any left there (`ucsh_jax.main`). The tools that read a run (search, serve,
report) rebuild it from `load_config`.
"""

import dataclasses
import datetime
import json
import os
from typing import Any, Dict, List, Optional

import ml_collections

from ucsh_jax import errors
from ucsh_jax import experiment
from ucsh_jax import preprocessing as preprocessing_lib
from ucsh_jax import workdir_lock
from ucsh_jax.models import download
from ucsh_jax.models import pretrained as pretrained_lib

RECORD_FILE = "run.json"
FORMAT = 1
# Fields (or groups, by prefix) that a resumed run may change: they alter neither the model,
# the optimiser state nor the splits.
MAY_CHANGE = ("num_epochs", "eval.", "log_every_steps", "checkpoint_every_steps",
              "checkpoints_to_keep", "data.num_workers", "data.manual_dir", "data.data_dir",
              "data.skip_corrupt", "model.dtype", "model.prefix_cache_dir")
# Fields added after runs were recorded, with the value that gives those runs' behaviour: a
# record without one reads as having that value.
ADDED_FIELDS = {"model.pooling": "fc7", "model.trainable_from": "",
                "model.prefix_cache_dir": "", "optimizer.backbone_lr_scale": 1.0,
                "data.splits_file": ""}
# UCSH's fields, which every config had before `method` was recorded (SSDH's too, unused).
UCSH_FIELDS = ("num_clusters", "ablation", "loss", "similarity", "kmeans_iters", "kmeans_inits",
               "kmeans_metric")


def upgrade(recorded: Dict[str, Any]) -> Dict[str, Any]:
  """A recorded config as the current code writes it.

  Adds the ADDED_FIELDS it lacks, and for a record from before `method` existed the method its
  config implies ("ssdh" for SSDH's targets, else "ucsh"); an SSDH record then drops UCSH's
  fields, which SSDH's config no longer has.
  """
  config = {k: dict(v) if isinstance(v, dict) else v for k, v in recorded.items()}
  for field, value in ADDED_FIELDS.items():
    group, name = field.split(".")
    if group in config and name not in config[group]:
      config[group][name] = value
  if "method" not in config:
    implied = "ssdh" if config.get("similarity", {}).get("target") == "ssdh" else "ucsh"
    config["method"] = implied
    if implied != "ucsh":
      config = {k: v for k, v in config.items() if k not in UCSH_FIELDS}
  return config


def record_path(workdir: str) -> str:
  return os.path.join(workdir, RECORD_FILE)


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _may_change(field: str) -> bool:
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in MAY_CHANGE)


def differing_fields(recorded: Dict[str, Any], config: Dict[str, Any]) -> List[str]:
  """'field: recorded -> given' for each field outside MAY_CHANGE whose value differs."""
  old, new = _flatten(upgrade(recorded)), _flatten(config)
  missing = object()
  changes = []
  for field in sorted(set(old) | set(new)):
    before, after = old.get(field, missing), new.get(field, missing)
    if before != after and not _may_change(field):
      show = lambda v: "(absent)" if v is missing else repr(v)
      changes.append(f"{field}: {show(before)} -> {show(after)}")
  return changes


def _weights(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Which weights file the run starts from, and its format (None without one)."""
  name = config.model.pretrained
  if not experiment.uses_backbone(config) or not name:
    return {"pretrained": name, "file": None, "format": None}
  path = name
  if not os.path.exists(path) and name in download.NAMES:
    path = os.path.join(experiment.WEIGHTS_CACHE, download.source_of(name).filename)
  kind = pretrained_lib.detect_format(path) if os.path.exists(path) else None
  return {"pretrained": name, "file": path, "format": kind}


def _preprocessing(config: ml_collections.ConfigDict,
                   weights: Dict[str, Any]) -> Optional[Dict[str, Any]]:
  """The pixel normalisation the run's network sees (the one `load_pretrained` picks)."""
  if config.data.name == "features":
    return None
  if not experiment.uses_backbone(config):
    chosen = preprocessing_lib.UNIT
  elif weights["format"] == "hdf5":
    chosen = preprocessing_lib.CAFFE
  else:
    chosen = preprocessing_lib.IMAGENET
  return dataclasses.asdict(chosen)


def describe(config: ml_collections.ConfigDict, config_file: Optional[str]) -> Dict[str, Any]:
  """The record of a run started with `config` (already resolved: absolute paths)."""
  weights = _weights(config)
  return {"format": FORMAT, "config": config.to_dict(), "config_file": config_file,
          "weights": weights, "preprocessing": _preprocessing(config, weights),
          "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def read(workdir: str) -> Optional[Dict[str, Any]]:
  """The workdir's record, or None if it has none; a damaged record is a UserError."""
  path = record_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"cannot read the run record {path}: {e}") from e
  if not isinstance(record, dict) or record.get("format") != FORMAT or "config" not in record:
    raise errors.UserError(f"{path} is not a run record of format {FORMAT}")
  return record


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a config that disagrees with the workdir's record (if it has one)."""
  record = read(workdir)
  if record is None:
    return
  changes = differing_fields(record["config"], config.to_dict())
  if changes:
    raise errors.UserError(
        f"the workdir {workdir} holds a run with another config; differing fields: "
        + "; ".join(changes),
        hint="use a new --workdir, or give the recorded values (see "
             f"{record_path(workdir)})")


def check_or_write(config: ml_collections.ConfigDict, workdir: str,
                   config_file: Optional[str], data_fingerprint: Optional[str] = None) -> None:
  """`check`, then `write`s the record if the workdir has none yet."""
  check(config, workdir)
  if read(workdir) is None:
    write(config, workdir, config_file, data_fingerprint)


def write(config: ml_collections.ConfigDict, workdir: str, config_file: Optional[str],
          data_fingerprint: Optional[str] = None) -> None:
  """Writes the workdir's record (atomically, replacing any), with the data's fingerprint when
  given."""
  os.makedirs(workdir, exist_ok=True)
  record = describe(config, config_file)
  if data_fingerprint is not None:
    record["data_fingerprint"] = data_fingerprint
  _write(workdir, record)


def _write(workdir: str, record: Dict[str, Any]) -> None:
  path = record_path(workdir)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def check_data(workdir: str, fingerprint: str, *, write: bool) -> None:
  """Refuses data whose fingerprint (`source.fingerprint`) is not the one the workdir's record
  holds; a record without one gets this one (written only with `write`: process 0)."""
  record = read(workdir)
  if record is None:
    return
  recorded = record.get("data_fingerprint")
  if recorded is None:
    if write:
      _write(workdir, {**record, "data_fingerprint": fingerprint})
  elif recorded != fingerprint:
    raise errors.UserError(
        f"the run in {workdir} was trained on other data (fingerprint {recorded}) than the "
        f"data its config names now ({fingerprint})",
        hint="restore the run's data (see the data fields of "
             f"{record_path(workdir)}), or train in a new --workdir")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config the run in `workdir` recorded (a UserError if there is no run)."""
  workdir_lock.check_workdir(workdir)
  record = read(workdir)
  if record is None:
    raise errors.UserError(f"{workdir} holds no run record ({RECORD_FILE})",
                           hint="train first: python -m ucsh_jax.main --config=... "
                                f"--workdir={workdir}")
  return ml_collections.ConfigDict(upgrade(record["config"]))
