"""Denoising losses: x-space MSE weighted by a function of the logSNR lambda.

snr: w = exp(lambda) (= eps-MSE); snr+1: w = exp(lambda) + 1 (= v-MSE);
truncated_snr: w = max(exp(lambda), 1); constant: w = 1 (plain x-MSE);
edm: w = exp(lambda) + 1 / sigma_data^2 with sigma_data = 0.5 (Karras et al.'s
(sigma^2 + sigma_data^2) / (sigma sigma_data)^2 at sigma = exp(-lambda / 2)).
"""
import jax.numpy as jnp

from diffusion.registry import Registry

WEIGHTINGS = Registry("loss weighting")
WEIGHTINGS.update({
    "snr": lambda lam: jnp.exp(lam),
    "snr+1": lambda lam: jnp.exp(lam) + 1.0,
    "truncated_snr": lambda lam: jnp.maximum(jnp.exp(lam), 1.0),
    "constant": lambda lam: jnp.ones_like(lam),
    "edm": lambda lam: jnp.exp(lam) + 4.0,
})
get_weighting = WEIGHTINGS.lookup


def mean_per_example(x):
  """Mean over every axis but the batch axis: (B, ...) -> (B,)."""
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def weighted_x_mse(x, x_hat, logsnr, weighting: str):
  """Per-example w(lambda) * mean ||x - x_hat||^2, shape (B,)."""
  return get_weighting(weighting)(logsnr) * mean_per_example(jnp.square(x - x_hat))
