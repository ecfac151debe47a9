"""Shallow baselines (LSH, ITQ, SH, SpH) against their defining properties, checked in NumPy."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from ucsh_jax.baselines import METHODS, itq, lsh, sh, sph


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits(return_X_y=True)
  return x.astype(np.float32), y


def _train(digits):
  return digits[0][:1000]


def _agree_where_clear(codes, values, margin):
  """Codes equal +-1 signs of `values` wherever |values| > margin, and that is almost everywhere."""
  clear = np.abs(values) > margin
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(np.asarray(codes)[clear], np.where(values >= 0, 1.0, -1.0)[clear])


def _check_pca(train, mean, pca):
  """`pca` columns are orthonormal and span the top principal directions, in order."""
  train = train.astype(np.float64)
  pca = np.asarray(pca, np.float64)
  np.testing.assert_allclose(np.asarray(mean), train.mean(0), rtol=1e-5, atol=1e-4)
  cov = np.cov(train, rowvar=False, bias=True)
  top = np.linalg.eigvalsh(cov)[::-1][:pca.shape[1]]
  np.testing.assert_allclose(pca.T @ pca, np.eye(pca.shape[1]), atol=1e-4)
  np.testing.assert_allclose(np.einsum("dp,de,ep->p", pca, cov, pca), top,
                             rtol=1e-3, atol=1e-3 * top[0])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_codes_are_pm1_deterministic_and_row_independent(name, digits):
  x = digits[0]
  fit, encode = METHODS[name]
  params = fit(_train(digits), 16, jax.random.key(3))
  again = fit(_train(digits), 16, jax.random.key(3))
  jax.tree.map(np.testing.assert_array_equal, params, again)
  codes = np.asarray(encode(params, x))
  assert codes.shape == (x.shape[0], 16) and codes.dtype == np.float32
  assert set(np.unique(codes)) == {-1.0, 1.0}
  np.testing.assert_array_equal(np.asarray(encode(params, x[5:9])), codes[5:9])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_bad_inputs_are_named(name, digits):
  fit, encode = METHODS[name]
  params = fit(_train(digits), 8, jax.random.key(0))
  with pytest.raises(ValueError, match=r"dimension 63 .* 64-dimensional"):
    encode(params, digits[0][:4, :63])
  with pytest.raises(ValueError, match=r"train_features must be a 2-D"):
    fit(digits[0][0], 8, jax.random.key(0))
  with pytest.raises(ValueError, match=r"num_bits must be a positive integer, got 0"):
    fit(_train(digits), 0, jax.random.key(0))


def test_itq_rejects_more_bits_than_dims(digits):
  with pytest.raises(ValueError, match=r"num_bits=65 .* \(1000, 64\)"):
    itq.fit(_train(digits), 65, jax.random.key(0))


def test_lsh_codes_are_signs_of_centred_projections(digits):
  train, x = _train(digits), digits[0]
  params = lsh.fit(train, 32, jax.random.key(1))
  np.testing.assert_allclose(np.asarray(params.mean), train.astype(np.float64).mean(0), rtol=1e-5)
  projection = np.asarray(params.projection, np.float64)
  assert projection.shape == (64, 32)
  assert abs(projection.mean()) < 0.1 and abs(projection.std() - 1) < 0.1
  values = (x - train.astype(np.float64).mean(0)) @ projection
  _agree_where_clear(lsh.encode(params, x), values, 1e-3 * np.abs(values).max())


def test_itq_loss_is_monotone_and_rotation_orthogonal(digits):
  train, x = _train(digits), digits[0]
  params, history = itq.fit(train, 16, jax.random.key(2), num_iters=30, return_history=True)
  history = np.asarray(history, np.float64)
  assert history.shape == (31,)
  assert np.all(np.diff(history) <= 1e-6 * history[0])
  assert history[-1] < 0.99 * history[0]
  rotation = np.asarray(params.rotation, np.float64)
  np.testing.assert_allclose(rotation.T @ rotation, np.eye(16), atol=1e-5)
  _check_pca(train, params.mean, params.pca)
  # The last entry is the loss ||B - V R||^2 of the returned parameters.
  v = (train - np.asarray(params.mean, np.float64)) @ np.asarray(params.pca, np.float64)
  vr = v @ rotation
  np.testing.assert_allclose(history[-1], np.sum((np.where(vr >= 0, 1, -1) - vr) ** 2), rtol=1e-4)
  values = (x - np.asarray(params.mean, np.float64)) @ np.asarray(params.pca) @ rotation
  _agree_where_clear(itq.encode(params, x), values, 1e-3 * np.abs(values).max())


def _sh_reference(train, x, mean, pca, num_bits):
  """Spectral hashing bits of Weiss et al. in NumPy, from a given PCA rotation."""
  project = lambda z: (z.astype(np.float64) - mean) @ pca
  proj_train = project(train)
  a, b = proj_train.min(0), proj_train.max(0)
  # Eigenvalue order of the 1-D modes sin(pi/2 + m pi/(b-a) (x-a)) is that of (m pi/(b-a))^2.
  candidates = sorted(((m * np.pi / (b[j] - a[j])) ** 2, j, m)
                      for j in range(pca.shape[1]) for m in range(1, num_bits + 1))
  chosen = candidates[:num_bits]
  dims = np.array([j for _, j, _ in chosen])
  modes = np.array([m for _, _, m in chosen])
  proj = project(x)[:, dims]
  values = np.sin(np.pi / 2 + modes * np.pi / (b[dims] - a[dims]) * (proj - a[dims]))
  return dims, modes, values


@pytest.mark.parametrize("case", ["digits_16_bits", "gaussian_3d_8_bits"])
def test_sh_bits_follow_analytic_eigenfunctions(case, digits):
  if case == "digits_16_bits":
    train, x, num_bits = _train(digits), digits[0], 16
  else:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(700, 3)) * [3.0, 1.5, 0.5] + 2.0).astype(np.float32)
    train, num_bits = x[:500], 8
  params = sh.fit(train, num_bits, jax.random.key(0))
  num_dims = min(num_bits, train.shape[1])
  assert params.pca.shape == (train.shape[1], num_dims)
  _check_pca(train, params.mean, params.pca)
  dims, modes, values = _sh_reference(
      train, x, np.asarray(params.mean, np.float64), np.asarray(params.pca, np.float64), num_bits)
  np.testing.assert_array_equal(np.asarray(params.dims), dims)
  np.testing.assert_array_equal(np.asarray(params.modes), modes)
  assert modes.max() > 1  # Higher modes of a direction are used, not only m = 1.
  _agree_where_clear(sh.encode(params, x), values, 1e-3)


@pytest.mark.parametrize("num_bits", [16, 64])
def test_sph_bits_balanced_with_quarter_overlaps(num_bits, digits):
  train = _train(digits)

  def overlap_stats(params):
    bits = (np.asarray(sph.encode(params, train)) > 0).astype(np.float64)
    pairs = (bits.T @ bits / len(train))[np.triu_indices(num_bits, k=1)]
    return bits.mean(0), np.abs(pairs - 0.25)

  ones, deviation = overlap_stats(sph.fit(train, num_bits, jax.random.key(0)))
  assert np.all(np.abs(ones - 0.5) <= 0.005)
  # Stopping rule: mean |o_ij/n - 1/4| <= 0.1/4 and std o_ij/n <= 0.15/4.
  assert deviation.mean() <= 0.1 / 4 + 1e-3
  assert deviation.max() < 0.15
  initial = sph.fit(train, num_bits, jax.random.key(0), max_iters=0)
  ones_init, deviation_init = overlap_stats(initial)
  assert np.all(np.abs(ones_init - 0.5) <= 0.005)
  assert deviation.mean() < 0.6 * deviation_init.mean()


def _mean_average_precision(query_codes, db_codes, query_labels, db_labels):
  """mAP over the whole database; Hamming ranking with ties broken by database index."""
  hamming = (query_codes.shape[1] - query_codes @ db_codes.T) / 2
  order = np.argsort(hamming, axis=1, kind="stable")
  relevant = (db_labels[order] == query_labels[:, None]).astype(np.float64)
  precision = np.cumsum(relevant, 1) / np.arange(1, relevant.shape[1] + 1)
  return np.mean((precision * relevant).sum(1) / np.maximum(relevant.sum(1), 1))


@pytest.mark.parametrize("num_bits", [16, 32])
def test_itq_beats_lsh_on_digits(num_bits, digits):
  x, y = digits
  perm = np.random.default_rng(0).permutation(len(x))
  query, database = perm[:300], perm[300:]
  train = x[database[:1000]]

  def score(method, key):
    params = method.fit(train, num_bits, key)
    return _mean_average_precision(np.asarray(method.encode(params, x[query])),
                                   np.asarray(method.encode(params, x[database])),
                                   y[query], y[database])

  itq_map = score(METHODS["itq"], jax.random.key(0))
  lsh_maps = [score(METHODS["lsh"], jax.random.key(seed)) for seed in range(3)]
  assert itq_map > max(lsh_maps) + 0.05, (itq_map, lsh_maps)
