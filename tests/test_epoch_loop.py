"""The epoch loop of `train.train_and_evaluate`, watched from outside on a tiny feature file.

One real run (3 epochs of 4 steps) with spies on the train step, the per-epoch refresh and the
hash centers; the tests recompute in NumPy what each step and refresh should have received:
each example's hash center from its cluster, the warm-started clusters, this epoch's threshold.
A second run (one epoch, target "neighbours", hash_init "itq") checks that each example's
neighbour list reaches the step by its index and that the ITQ start is fit on the training set.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import features as features_config
import kmeans_reference
from ucsh_jax import ops
from ucsh_jax import train
from ucsh_jax.methods import ucsh as ucsh_method

NUM_ROWS, DIM, NUM_TRAIN = 120, 16, 64
EPOCHS, BATCH, CLUSTERS, KMEANS_ITERS = 3, 16, 4, 3
STEPS_PER_EPOCH = NUM_TRAIN // BATCH


def _write_feature_file(path):
  """Four overlapping non-negative blobs, with the file's own splits (train not the first rows)."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, CLUSTERS, NUM_ROWS)
  means = 1.5 * np.abs(rng.normal(size=(CLUSTERS, DIM)))
  features = np.abs(means[labels] + 0.6 * rng.normal(size=(NUM_ROWS, DIM))).astype(np.float32)
  order = rng.permutation(NUM_ROWS)
  query_idx, database_idx = np.sort(order[:20]), np.sort(order[20:])
  train_idx = np.sort(rng.choice(database_idx, NUM_TRAIN, replace=False))
  np.savez(path, features=features, labels=labels.astype(np.int32), query_idx=query_idx,
           database_idx=database_idx, train_idx=train_idx)
  return features, train_idx


def _config(path):
  config = features_config.get_config()
  config.data.path = str(path)
  config.num_epochs, config.batch_size, config.eval.batch_size = EPOCHS, BATCH, 32
  config.bits, config.num_clusters, config.model.decoder_hidden = 8, CLUSTERS, 16
  config.kmeans_iters, config.kmeans_inits = KMEANS_ITERS, 2
  config.threshold_samples = NUM_TRAIN  # The whole training set: no sampling.
  # The paper's objective (the centers and the threshold both enter the loss), and a learning
  # rate that moves the features visibly between epochs.
  config.similarity.target = "cosine"
  config.loss.beta = 10.0
  config.model.hash_init = "random"
  config.optimizer.learning_rate = 1e-2
  config.optimizer.feature_lr_scale = 1.0
  return config


def _host(tree):
  return jax.tree.map(np.array, tree)


def _run_with_spies(root, config, features, train_idx):
  """Runs the job and returns what the spies saw."""
  seen = {"steps": [], "refreshes": [], "centers": [], "model": []}
  real_make_train_step = train.train_step_lib.make_train_step
  real_refresh = ucsh_method.epoch_state_lib.refresh_epoch_state
  real_hash_centers = ucsh_method.ops.hash_centers

  def make_train_step(mesh, **kwargs):
    seen["model"].append(kwargs["model"])
    step = real_make_train_step(mesh, **kwargs)

    def spy(state, batch, threshold, key):
      # Copied before the call: the state's buffers are donated to it.
      seen["steps"].append(dict(step=int(state.step), params=_host(state.params),
                                batch=_host(batch), threshold=np.array(threshold)))
      return step(state, batch, threshold, key)

    return spy

  def refresh(features_NxD, previous, **kwargs):
    result = real_refresh(features_NxD, previous, **kwargs)
    seen["refreshes"].append(dict(features=np.array(features_NxD), kwargs=kwargs,
                                  previous=None if previous is None else _host(previous),
                                  result=_host(result)))
    return result

  def hash_centers(*args, **kwargs):
    table = real_hash_centers(*args, **kwargs)
    seen["centers"].append(np.array(table))
    return table

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train.train_step_lib, "make_train_step", make_train_step)
    patch.setattr(ucsh_method.epoch_state_lib, "refresh_epoch_state", refresh)
    patch.setattr(ucsh_method.ops, "hash_centers", hash_centers)
    results = train.train_and_evaluate(config, str(root / "run"))
  epochs = config.num_epochs
  assert results["steps"] == epochs * STEPS_PER_EPOCH
  assert len(seen["steps"]) == epochs * STEPS_PER_EPOCH
  assert [r["kwargs"]["epoch"] for r in seen["refreshes"]] == list(range(epochs))
  assert len(seen["centers"]) == 1 and len(seen["model"]) == 1
  seen.update(config=config, features=features, train_idx=train_idx,
              splits_train=np.load(root / "run" / "splits" / "train.npy"))
  return seen


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
  """The job with target "cosine" and a random hash layer, 3 epochs."""
  root = tmp_path_factory.mktemp("epoch_loop")
  features, train_idx = _write_feature_file(root / "features.npz")
  return _run_with_spies(root, _config(root / "features.npz"), features, train_idx)


@pytest.fixture(scope="module")
def neighbour_loop(tmp_path_factory):
  """One epoch with the neighbour-rank targets and the ITQ start of the hash layer."""
  root = tmp_path_factory.mktemp("neighbour_loop")
  features, train_idx = _write_feature_file(root / "features.npz")
  config = _config(root / "features.npz")
  config.num_epochs = 1
  config.similarity.target = "neighbours"
  config.similarity.num_neighbours = 5
  config.model.hash_init = "itq"
  return _run_with_spies(root, config, features, train_idx)


def _epoch_steps(loop, epoch):
  steps = loop["steps"][epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
  assert [s["step"] for s in steps] == list(range(epoch * STEPS_PER_EPOCH,
                                                  (epoch + 1) * STEPS_PER_EPOCH))
  return steps


def _eval_outputs(loop, params, rows, name):
  """Eval-mode output `name` of the inputs `rows` of the file, on one device."""
  out = loop["model"][0].apply({"params": params}, jnp.asarray(loop["features"][rows]),
                               train=False)
  return np.asarray(out[name], np.float64)


def _eval_features(loop, params):
  """Eval-mode features of the training inputs, in training-set order, on one device."""
  return _eval_outputs(loop, params, loop["train_idx"], "features")


def test_each_example_gets_the_center_of_its_cluster(loop):
  centers_NxK = loop["centers"][0]
  assert centers_NxK.shape == (CLUSTERS, loop["config"].bits)
  assert len(np.unique(centers_NxK, axis=0)) == CLUSTERS  # Distinct: a wrong cluster shows.
  np.testing.assert_array_equal(loop["splits_train"], loop["train_idx"])
  for epoch in range(EPOCHS):
    refreshed = loop["refreshes"][epoch]["result"]
    steps = _epoch_steps(loop, epoch)
    # The assignments are the nearest centroids of this epoch's eval-mode features.
    features = _eval_features(loop, steps[0]["params"])
    nearest = kmeans_reference.sq_dist(features, refreshed.centroids).argmin(1)
    np.testing.assert_array_equal(refreshed.assignments, nearest)
    assert len(np.unique(nearest)) == CLUSTERS
    visited = []
    for s in steps:
      batch = s["batch"]
      index = batch["index"]
      assert index.shape == (BATCH,)
      # "index" is the example's position in the training set...
      np.testing.assert_array_equal(batch["features"],
                                    loop["features"][loop["train_idx"][index]])
      # ...and its center is that of the cluster its features fall in.
      np.testing.assert_array_equal(batch["center"], centers_NxK[nearest[index]])
      visited.append(index)
    # Shuffled: the batch order is not the training-set order, so a lookup by batch position
    # would give other centers.
    visited = np.concatenate(visited)
    assert len(np.unique(visited)) == NUM_TRAIN
    assert not np.array_equal(visited, np.arange(NUM_TRAIN))


def test_clusters_are_warm_started_from_the_previous_epoch(loop):
  refreshes = loop["refreshes"]
  assert refreshes[0]["previous"] is None or int(refreshes[0]["previous"].epoch) < 0
  for epoch in range(1, EPOCHS):
    previous, current = refreshes[epoch - 1]["result"], refreshes[epoch]
    assert current["previous"] is not None, f"epoch {epoch}: no previous state"
    assert int(current["previous"].epoch) == epoch - 1
    for name in ("centroids", "assignments", "threshold"):
      np.testing.assert_array_equal(getattr(current["previous"], name),
                                    getattr(previous, name))
    assert current["kwargs"]["kmeans_iters"] == KMEANS_ITERS
    # Lloyd from the previous centroids on this epoch's features: cluster j stays cluster j.
    expected, _ = kmeans_reference.lloyd(current["features"], previous.centroids, KMEANS_ITERS,
                                       allow_empty=False)
    np.testing.assert_allclose(current["result"].centroids, expected, rtol=1e-5, atol=1e-5)
    # The features and with them the centroids moved: the epochs really differ.
    assert np.abs(current["features"] - refreshes[epoch - 1]["features"]).max() > 1e-2
    assert np.abs(expected - previous.centroids).max() > 1e-3


def test_threshold_is_this_epochs_estimate_from_this_epochs_features(loop):
  thresholds = []
  for epoch in range(EPOCHS):
    refresh = loop["refreshes"][epoch]
    steps = _epoch_steps(loop, epoch)
    # The refresh got the eval-mode features of the parameters this epoch's first step trains.
    features = _eval_features(loop, steps[0]["params"])
    np.testing.assert_allclose(refresh["features"], features, rtol=1e-5, atol=1e-6)
    # The estimate from exactly those features (recomputed ones agree to ~1e-6, but a histogram
    # bin edge could tell them apart).
    estimate = float(ops.similarity_threshold(jnp.asarray(refresh["features"])).threshold)
    for s in steps:
      assert s["threshold"].shape == ()
      np.testing.assert_allclose(float(s["threshold"]), estimate, rtol=1e-5, atol=1e-6,
                                 err_msg=f"epoch {epoch}, step {s['step']}")
    thresholds.append(estimate)
  # Each epoch's estimate is new: a stale threshold would not pass the checks above.
  assert min(abs(a - b) for a, b in zip(thresholds, thresholds[1:])) > 1e-3, thresholds


def test_neighbour_lists_reach_the_step_by_example_index(neighbour_loop):
  refreshed = neighbour_loop["refreshes"][0]["result"]
  steps = _epoch_steps(neighbour_loop, 0)
  # The lists are the cosine neighbours (in training-set indices) of this epoch's features.
  features = _eval_features(neighbour_loop, steps[0]["params"])
  unit = features / np.linalg.norm(features, axis=1, keepdims=True)
  cosine = unit @ unit.T
  np.fill_diagonal(cosine, np.inf)
  expected = np.argsort(-cosine, axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(refreshed.neighbours, expected)
  visited = []
  for s in steps:
    index = s["batch"]["index"]
    np.testing.assert_array_equal(s["batch"]["neighbours"], expected[index])
    visited.append(index)
  # Shuffled, and the lists differ from row to row: a lookup by batch position shows.
  assert not np.array_equal(np.concatenate(visited), np.arange(NUM_TRAIN))
  assert len({tuple(row) for row in expected}) == NUM_TRAIN


def test_itq_start_is_fit_on_the_training_split_only(neighbour_loop):
  params = neighbour_loop["steps"][0]["params"]  # The start, before the first update.
  train_idx = neighbour_loop["train_idx"]
  others = np.setdiff1d(np.arange(NUM_ROWS), train_idx)
  logits_train = _eval_outputs(neighbour_loop, params, train_idx, "logits")
  logits_others = _eval_outputs(neighbour_loop, params, others, "logits")
  scale = logits_train.std(0)
  # h = (x - mean) P R with the training set's mean: zero mean over exactly those rows.
  np.testing.assert_allclose(logits_train.mean(0) / scale, 0.0, atol=1e-4)
  assert np.abs(logits_others.mean(0) / scale).max() > 0.05
  # P holds the training set's principal directions: the first code bits' variance is the
  # training covariance's top eigenvalues (the rotation R mixes them; their sum is kept).
  centred = _eval_features(neighbour_loop, params)
  centred = centred - centred.mean(0)
  eigenvalues = np.linalg.eigvalsh(centred.T @ centred / len(centred))[::-1]
  bits = neighbour_loop["config"].bits
  np.testing.assert_allclose((logits_train ** 2).mean(0).sum(), eigenvalues[:bits].sum(),
                             rtol=1e-4)
