"""Inception Score from classifier logits, in float64 on the host.

IS = exp(E_x KL(p(y|x) || p(y))),  p(y) = E_x p(y|x),

computed separately on `splits` equal chunks of the samples (the reference uses 10
splits of 50k samples) and reported as the mean and standard deviation over chunks.
For the FID Inception use its 'logits_unbiased' (pool @ W, as the reference code does).
"""
import numpy as np
from scipy import special


def inception_score_single(logits) -> float:
  """exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y))) over one set of logits (N, K)."""
  log_p = special.log_softmax(np.asarray(logits, np.float64), axis=-1)
  log_marginal = special.logsumexp(log_p, axis=0) - np.log(len(log_p))
  kl = np.sum(np.exp(log_p) * (log_p - log_marginal), axis=-1)
  return float(np.exp(np.mean(kl)))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """(mean, std) of the Inception Score over `splits` equal chunks of logits (N, K)."""
  logits = np.asarray(logits)
  if len(logits) < splits:
    raise ValueError(f"{len(logits)} samples cannot be split into {splits} chunks.")
  scores = [inception_score_single(chunk) for chunk in np.array_split(logits, splits)]
  return float(np.mean(scores)), float(np.std(scores))
