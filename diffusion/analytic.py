"""Exact denoisers for Gaussian and Gaussian-mixture data (for tests and benchmarks).

Single Gaussian N(mu, diag(s^2)): x_hat = mu + alpha s^2 / v * (z - alpha mu),
v = alpha^2 s^2 + sigma^2. Mixture: E[x | z] = sum_k r_k(z) x_hat_k(z) with
r_k ∝ pi_k N(z; alpha mu_k, v_k). Conditioning on a class keeps only that
class's components, which gives an exact classifier-free-guidance teacher.
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """Mixture over R^D: weights (K,), means (K, D), variances (K, D), labels (K,)."""
  weights: np.ndarray
  means: np.ndarray
  variances: np.ndarray
  labels: Optional[np.ndarray] = None

  @property
  def num_classes(self) -> int:
    return 0 if self.labels is None else int(np.max(self.labels)) + 1

  def sample(self, rng, n: int, label=None):
    """Draw n points (and their component's labels) from the mixture."""
    logits = jnp.log(jnp.asarray(self.weights))
    if label is not None:
      logits = jnp.where(jnp.asarray(self.labels) == label, logits, -jnp.inf)
    k_rng, x_rng = jax.random.split(rng)
    k = jax.random.categorical(k_rng, logits, shape=(n,))
    eps = jax.random.normal(x_rng, (n, self.means.shape[1]))
    x = jnp.asarray(self.means)[k] + jnp.sqrt(jnp.asarray(self.variances))[k] * eps
    labels = None if self.labels is None else jnp.asarray(self.labels)[k]
    return x, labels


def gaussian(mean, variance) -> GaussianMixture:
  """A single Gaussian N(mean, diag(variance)) as a one-component mixture."""
  mean = np.asarray(mean, np.float32)[None]
  return GaussianMixture(np.ones(1, np.float32), mean,
                         np.broadcast_to(np.asarray(variance, np.float32), mean.shape))


def posterior(mixture: GaussianMixture, z, alpha, sigma, label=None) -> Prediction:
  """Prediction(E[x | z_t = z], E[eps | z_t = z]) for z of shape (B, D), alpha and sigma
  of shape (B, 1); `label` (B,) keeps only that class's components (null class: all).

  Per component E[eps | z] = sigma / v (z - alpha mu), written without the division
  (z - alpha x_hat) / sigma, so it stays exact as sigma -> 0 (the flow's t = 0).
  """
  mu = jnp.asarray(mixture.means)[None]           # (1, K, D)
  s2 = jnp.asarray(mixture.variances)[None]
  a, sg = alpha[:, None], sigma[:, None]          # (B, 1, 1)
  v = a**2 * s2 + sg**2
  diff = z[:, None] - a * mu                      # (B, K, D)
  x_k = mu + a * s2 / v * diff
  log_r = jnp.log(jnp.asarray(mixture.weights))[None] - 0.5 * jnp.sum(
      diff**2 / v + jnp.log(v), axis=-1)
  if label is not None:
    keep = jnp.asarray(mixture.labels)[None] == label[:, None]
    null = label >= mixture.num_classes           # the null class keeps all components
    log_r = jnp.where(keep | null[:, None], log_r, -jnp.inf)
  r = jax.nn.softmax(log_r, axis=-1)[..., None]
  return Prediction(x=jnp.sum(r * x_k, axis=1), eps=jnp.sum(r * sg / v * diff, axis=1))


def analytic_denoiser(mixture: GaussianMixture, process):
  """The exact Denoiser for `mixture` data under `process`; params are ignored."""

  def denoise(params, z, t, cond=None) -> Prediction:
    del params
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), z.shape[:1])
    alpha, sigma = process.alpha_sigma(broadcast_to(t, z))
    label = None if cond is None else cond.get("label")
    return posterior(mixture, z, alpha, sigma, label)

  return denoise


def gaussian_flow_map(mean, variance, process, z_t, t, s):
  """Exact probability-flow map of N(mean, diag(variance)) data from time t to s.

  z_s = alpha_s mu + sqrt(v_s / v_t) (z_t - alpha_t mu), v = alpha^2 s^2 + sigma^2.
  """
  a_t, s_t = process.alpha_sigma(jnp.asarray(t, jnp.float32))
  a_s, s_s = process.alpha_sigma(jnp.asarray(s, jnp.float32))
  v_t = a_t**2 * variance + s_t**2
  v_s = a_s**2 * variance + s_s**2
  return a_s * mean + jnp.sqrt(v_s / v_t) * (z_t - a_t * mean)
