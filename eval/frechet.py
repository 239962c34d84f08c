"""Frechet distance between Gaussians fitted to features, in float64 on the host.

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)

(FID when the features are Inception pool features, FD-<dataset> for a dataset
classifier's). The trace term uses the symmetric form: with the eigendecomposition
S1 = U diag(d) U^T, S1^1/2 = U diag(sqrt d) U^T and tr((S1^1/2 S2 S1^1/2)^1/2) is
the sum of square roots of the eigenvalues of a symmetric PSD matrix (negative
round-off eigenvalues clipped to 0), so no complex parts or failing sqrtm.

Statistics stream: `Moments` (count, mean, M2 = sum of outer products of deviations)
merge batch by batch with Chan et al.'s pairwise update, so 50k x 2048 features never
need to sit in memory at once.
"""
from typing import NamedTuple

import numpy as np

from infra import npz_tree


class Moments(NamedTuple):
  """count n, mean (D,), M2 = sum_i (f_i - mean)(f_i - mean)^T (D, D); float64."""
  count: int
  mean: np.ndarray
  m2: np.ndarray


def moments(features) -> Moments:
  """The Moments of a batch of features (N, D)."""
  f = np.asarray(features, np.float64)
  mean = f.mean(axis=0)
  centred = f - mean
  return Moments(len(f), mean, centred.T @ centred)


def merge(a: Moments, b: Moments) -> Moments:
  """Chan et al.: with d = mean_b - mean_a and n = na + nb,
  mean = mean_a + d nb / n,  M2 = M2a + M2b + d d^T na nb / n.
  """
  if a.count == 0:
    return b
  n = a.count + b.count
  delta = b.mean - a.mean
  return Moments(n, a.mean + delta * (b.count / n),
                 a.m2 + b.m2 + np.outer(delta, delta) * (a.count * b.count / n))


def mean_cov(m: Moments) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) with the unbiased covariance M2 / (n - 1), like numpy.cov."""
  if m.count < 2:
    raise ValueError(f"Need at least 2 feature vectors for a covariance, got {m.count}.")
  return m.mean, m.m2 / (m.count - 1)


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of features (N, D): mean and unbiased covariance, float64."""
  return mean_cov(moments(features))


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root U diag(sqrt(max(d, 0))) U^T of a symmetric matrix."""
  d, u = np.linalg.eigh((matrix + matrix.T) / 2)
  return (u * np.sqrt(np.clip(d, 0.0, None))) @ u.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2) = sum_i sqrt(eig_i(S1^1/2 S2 S1^1/2))."""
  root = sqrtm_psd(sigma1)
  inner = root @ sigma2 @ root
  eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"Statistics of different sizes: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def frechet_distance_of_features(features1, features2) -> float:
  """FD between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
  return frechet_distance(*statistics(features1), *statistics(features2))


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Write (mu, sigma) to an .npz with keys 'mu' and 'sigma' (pytorch-fid's layout), atomically."""
  npz_tree.write_npz(path, mu=mu, sigma=sigma)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an .npz written by `save_stats` (or pytorch-fid)."""
  data = npz_tree.read_npz(path)
  return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
