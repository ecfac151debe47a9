"""NumPy references (float64, written from the authors' PyTorch code) for GreedyHash and
Bi-half: the pair-cosine loss and its gradient, the cubic penalty, the bi-half assignment."""

import numpy as np


def pair_cosines(x):
  """cos(x_i, x_{i+P}), P = N // 2, norms clamped at 1e-8 (torch's cosine_similarity)."""
  x = np.asarray(x, np.float64)
  p = len(x) // 2
  a, b = x[:p], x[p:2 * p]
  na = np.maximum(np.sqrt((a * a).sum(1)), 1e-8)
  nb = np.maximum(np.sqrt((b * b).sum(1)), 1e-8)
  return (a * b).sum(1) / (na * nb)


def pair_loss_and_grad(codes, features):
  """(mean_i (cos(b_i, b_{i+P}) - cos(x_i, x_{i+P}))^2, its gradient w.r.t. the codes)."""
  b = np.asarray(codes, np.float64)
  n, p = len(b), len(b) // 2
  diff = pair_cosines(b) - pair_cosines(features)
  grad = np.zeros_like(b)
  for i in range(p):
    u, v = b[i], b[i + p]
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    c = u @ v / (nu * nv)
    scale = 2.0 * diff[i] / p
    grad[i] += scale * (v / (nu * nv) - c * u / nu**2)
    grad[i + p] += scale * (u / (nu * nv) - c * v / nv**2)
  assert grad.shape == (n, b.shape[1])
  return np.mean(diff**2), grad


def cubic_and_grad(h):
  """(mean ||h| - 1|^3, its gradient)."""
  h = np.asarray(h, np.float64)
  e = np.abs(h) - 1.0
  return np.mean(np.abs(e)**3), 3.0 * e * np.abs(e) * np.sign(h) / h.size


def bi_half(u):
  """Per column: +1 on the N // 2 largest entries (ties: lower row first), -1 elsewhere."""
  u = np.asarray(u)
  b = -np.ones(u.shape)
  for j in range(u.shape[1]):
    order = sorted(range(len(u)), key=lambda i: (-u[i, j], i))
    b[order[:len(u) // 2], j] = 1.0
  return b
