"""The README's main job: the digits demo beats random projections of the same inputs."""

import jax
import numpy as np

from configs import digits
from ucsh_jax import baselines
from ucsh_jax import data
from ucsh_jax import evaluate
from ucsh_jax import preprocessing
from ucsh_jax import train


def test_digits_demo_beats_lsh_on_the_same_pixels(tmp_path):
  config = digits.get_config()
  results = train.train_and_evaluate(config, str(tmp_path))

  source = data.get_source(config.data)
  splits = data.make_splits(config.data, source, seed=config.seed, workdir=str(tmp_path))
  pixels = np.stack([source[i]["image"] for i in range(len(source))])
  features = preprocessing.UNIT.apply(pixels).reshape(len(source), -1)
  lsh = baselines.METHODS["lsh"]
  lsh_maps = []
  for seed in range(3):
    params = lsh.fit(features[splits.train], config.bits, jax.random.key(seed))
    codes = {"query_codes": np.asarray(lsh.encode(params, features[splits.query])),
             "database_codes": np.asarray(lsh.encode(params, features[splits.database])),
             "query_labels": source.labels[splits.query],
             "database_labels": source.labels[splits.database]}
    lsh_maps.append(evaluate.score(codes, config.eval.topk)["map"])
  assert results["map"] > max(lsh_maps) + 0.05, (results["map"], lsh_maps)
