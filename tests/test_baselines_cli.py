"""The baselines command (run_baselines) and the results-table collector, checked in NumPy."""

import json
import os

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from configs import features as features_config
from configs import test as test_config
import retrieval_reference as reference
from ucsh_jax import tables
from ucsh_jax.baselines import METHODS
from ucsh_jax.baselines.__main__ import DEFAULT_METHODS
from ucsh_jax.baselines.__main__ import run_baselines


def _direct_maps(train, query, database, query_labels, db_labels, *, methods, bits, seed, topk):
  maps = {}
  for name in methods:
    for b in bits:
      params = METHODS[name].fit(train, b, jax.random.fold_in(jax.random.key(seed), b))
      codes = [np.asarray(METHODS[name].encode(params, x)) for x in (query, database)]
      maps[name, b] = reference.mean_average_precision(*codes, query_labels, db_labels, topk)
  return maps


def _check_outputs(workdir, results, methods, bits, margin):
  """The files written; every MAP is the NumPy reference MAP of the codes written and at
  least `margin` above chance (the MAP of random codes of as many bits)."""
  with open(os.path.join(workdir, "baselines.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  with np.load(os.path.join(workdir, "baselines_codes.npz")) as npz:
    codes = dict(npz)
  for split in ("query", "database"):
    np.testing.assert_array_equal(codes[f"{split}_ids"],
                                  np.load(os.path.join(workdir, "splits", f"{split}.npy")))
  for name in methods:
    for b in bits:
      query, database = codes[f"{name}_{b}_query_codes"], codes[f"{name}_{b}_database_codes"]
      assert query.dtype == np.int8 and query.shape == (results["num_query"], b)
      assert database.shape == (results["num_database"], b)
      value = results["map"][name][str(b)]
      assert reference.mean_average_precision(
          query, database, codes["query_labels"], codes["database_labels"],
          results["topk"]) == pytest.approx(value, rel=1e-12)
      chance = reference.chance_map(codes["query_labels"], codes["database_labels"], b,
                                    results["topk"])
      assert value > chance + margin, (name, b, value, chance)
  assert sorted(results["methods"]) == sorted(methods) and results["bits"] == list(bits)
  with open(os.path.join(workdir, "baselines.md")) as f:
    markdown = f.read()
  for name in methods:
    row = f"| {tables.METHOD_NAMES[name]} | " + " | ".join(
        f"{results['map'][name][str(b)]:.4f}" for b in bits) + " |"
    assert row in markdown
    for b in bits:
      assert results["scores"][name][str(b)]["map"] == results["map"][name][str(b)]


def test_digits_images_match_direct_fit_encode_score(tmp_path):
  config = test_config.get_config()
  assert config.data.name == "digits" and not config.model.pretrained
  assert config.eval.topk == -1  # Whole-database MAP.
  methods, bits = ("lsh", "itq"), (8, 16)
  workdir = str(tmp_path)
  results = run_baselines(config, workdir, methods, bits, save_features=True)
  # Measured: 0.263 (LSH, 8 bits) to 0.341 (ITQ, 16 bits) on the random VGG16's fc7, against
  # 0.125 for random codes (std 0.006 over seeds) and 0.08 with the query codes negated.
  _check_outputs(workdir, results, methods, bits, margin=0.1)
  # Asked for LSH, ITQ: run, written and printed in the paper's Table 1 order.
  assert results["methods"] == ["itq", "lsh"]
  with open(os.path.join(workdir, "baselines.md")) as f:
    rows = [line.split("|")[1].strip() for line in f if line.startswith("| ")]
  rows.remove("---")  # The header's rule.
  assert rows == ["Method", "ITQ", "LSH"]
  assert results["topk"] is None and results["dataset"] == "digits"

  splits = {n: np.load(os.path.join(workdir, "splits", f"{n}.npy"))
            for n in ("query", "database", "train")}
  assert (results["num_query"], results["num_database"], results["num_train"]) == (
      config.data.num_query, config.data.num_database, config.data.num_train)
  with np.load(os.path.join(workdir, "features.npz")) as npz:
    feats, labels = npz["features"], npz["labels"]
    idx = {n: npz[f"{n}_idx"] for n in ("query", "database", "train")}
  assert feats.shape == (config.data.num_query + config.data.num_database,
                         results["feature_dim"])
  assert np.all(feats >= 0) and feats.std() > 0  # fc7 after ReLU, not constant.
  digit_labels = load_digits().target
  for name in idx:
    np.testing.assert_array_equal(labels[idx[name]], digit_labels[splits[name]])
  assert np.isin(idx["train"], idx["database"]).all()

  expected = _direct_maps(feats[idx["train"]], feats[idx["query"]], feats[idx["database"]],
                          labels[idx["query"]], labels[idx["database"]], methods=methods,
                          bits=bits, seed=config.seed, topk=None)
  for (name, b), value in expected.items():
    np.testing.assert_allclose(results["map"][name][str(b)], value, rtol=1e-6)


def test_feature_file_multilabel_topk_matches_direct(tmp_path):
  rng = np.random.default_rng(0)
  n, d = 120, 12
  labels = (rng.random((n, 4)) < 0.35).astype(np.int32)
  labels[np.arange(n), rng.integers(0, 4, n)] = 1  # Every item has a label.
  features = (labels @ rng.normal(size=(4, d)) + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
  path = str(tmp_path / "features.npz")
  np.savez(path, features=features, labels=labels)
  config = features_config.get_config()
  config.data.path = path
  config.data.num_query = 20
  config.data.num_train = 48
  config.batch_size = 16
  config.eval.batch_size = 32
  config.eval.topk = 25
  methods, bits = ("sh", "sph"), (4, 8)
  workdir = str(tmp_path / "run")
  results = run_baselines(config, workdir, methods, bits)
  # Measured: 0.863 (SpH, 8 bits) to 0.970 (SH, 4 bits), against 0.78 for random codes (std
  # 0.019 over seeds: most pairs share a label) and 0.42 to 0.65 with the query codes negated.
  _check_outputs(workdir, results, methods, bits, margin=0.05)
  assert results["topk"] == 25 and results["feature_dim"] == d
  assert not os.path.exists(os.path.join(workdir, "features.npz"))

  splits = {s: np.load(os.path.join(workdir, "splits", f"{s}.npy"))
            for s in ("query", "database", "train")}
  assert len(splits["query"]) == 20 and len(splits["train"]) == 48
  assert len(splits["database"]) == n - 20
  expected = _direct_maps(features[splits["train"]], features[splits["query"]],
                          features[splits["database"]], labels[splits["query"]],
                          labels[splits["database"]], methods=methods, bits=bits,
                          seed=config.seed, topk=25)
  for (name, b), value in expected.items():
    np.testing.assert_allclose(results["map"][name][str(b)], value, rtol=1e-6)


def test_the_command_runs_every_method_in_the_papers_table1_order():
  assert DEFAULT_METHODS == ("sh", "itq", "lsh", "sph")
  assert tuple(tables.METHOD_NAMES[m] for m in DEFAULT_METHODS) == tables.TABLE1_ROWS[:4]


def test_unknown_method_is_refused_before_any_work(tmp_path):
  with pytest.raises(ValueError, match="pca"):
    run_baselines(test_config.get_config(), str(tmp_path), methods=("lsh", "pca"), bits=(8,))
  with pytest.raises(ValueError, match="bits"):
    run_baselines(test_config.get_config(), str(tmp_path), methods=("lsh",), bits=(0,))
  assert not os.listdir(tmp_path)


def _write(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f)


def _parse_tables(markdown):
  """{table number: {row name: {column header: cell}}} of the collector's Markdown."""
  parsed, number, header = {}, None, None
  for line in markdown.splitlines():
    if line.startswith("Table "):
      number, header = int(line.split()[1].rstrip(".")), None
      parsed[number] = {}
    elif line.startswith("| ") and "---" not in line and number is not None:
      cells = [c.strip() for c in line.strip("|").split("|")]
      if header is None:
        header = cells
      else:
        parsed[number][cells[0]] = dict(zip(header[1:], cells[1:]))
  return parsed


def test_collector_builds_paper_tables_from_results_files(tmp_path):
  rng = np.random.default_rng(1)
  root = str(tmp_path)
  expected = {}  # (table, row, column) -> value.
  for dataset, name in (("cifar10", "CIFAR-10"), ("mirflickr", "MIRFLICKR-25K")):
    for bits in (16, 32):
      for ablation in ("", "V", "R"):
        value = float(rng.random())
        _write(os.path.join(root, dataset, f"ucsh{ablation}_{bits}", "results.json"),
               {"dataset": dataset, "bits": bits, "ablation": ablation, "topk": 5000,
                "map": value, "elapsed_s": 1.0})
        row = tables.ABLATION_NAMES[ablation]
        expected[2, row, f"{name} {bits} bits"] = value
        if not ablation:
          expected[1, "UCSH", f"{name} {bits} bits"] = value
  maps = {m: {"16": float(rng.random()), "32": float(rng.random())} for m in ("itq", "lsh")}
  _write(os.path.join(root, "cifar10", "baselines", "baselines.json"),
         {"dataset": "cifar10", "topk": 5000, "map": maps})
  for m, by_bits in maps.items():
    for bits, value in by_bits.items():
      expected[1, tables.METHOD_NAMES[m], f"CIFAR-10 {bits} bits"] = value

  tables.main(["tables", root])
  with open(os.path.join(root, "results.md")) as f:
    markdown = f.read()
  assert "MAP@5000" in markdown
  parsed = _parse_tables(markdown)
  assert list(parsed[1]) == ["ITQ", "LSH", "UCSH"]  # Paper order; SH and SpH have no runs.
  assert list(parsed[2]) == ["UCSH", "UCSH-V", "UCSH-R"]
  assert list(parsed[1]["UCSH"]) == ["CIFAR-10 16 bits", "CIFAR-10 32 bits",
                                     "MIRFLICKR-25K 16 bits", "MIRFLICKR-25K 32 bits"]
  for (number, row, column), value in expected.items():
    assert parsed[number][row][column] == f"{value:.4f}"
  assert parsed[1]["ITQ"]["MIRFLICKR-25K 16 bits"] == "-"
  assert sum(len(cols) for rows in parsed.values() for cols in rows.values()) == 3 * 4 + 3 * 4

  _write(os.path.join(root, "again", "results.json"),
         {"dataset": "cifar10", "bits": 16, "ablation": "V", "topk": 5000, "map": 0.5})
  with pytest.raises(ValueError, match="UCSH-V on cifar10 at 16 bits"):
    tables.render(root)
