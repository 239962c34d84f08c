"""Parameterizations: network output o -> Prediction(x_hat, eps_hat) given z_t.

Each function has the signature `fn(o, z, t, process) -> Prediction`, t of shape (B,).
"""
from typing import NamedTuple

import jax.numpy as jnp

from diffusion.processes import broadcast_to
from diffusion.registry import Registry


class Prediction(NamedTuple):
  """A denoiser's estimate of the clean data x and of the noise eps."""
  x: jnp.ndarray
  eps: jnp.ndarray


PARAMETERIZATIONS = Registry("parameterization")
register = PARAMETERIZATIONS.register
get_parameterization = PARAMETERIZATIONS.lookup


def _scales(z, t, process):
  return process.alpha_sigma(broadcast_to(t, z))


@register("eps")
def from_eps(o, z, t, process) -> Prediction:
  """eps_hat = o, x_hat = (z - sigma eps_hat) / alpha."""
  alpha, sigma = _scales(z, t, process)
  return Prediction(x=(z - sigma * o) / alpha, eps=o)


@register("x")
def from_x(o, z, t, process) -> Prediction:
  """x_hat = o, eps_hat = (z - alpha x_hat) / sigma."""
  alpha, sigma = _scales(z, t, process)
  return Prediction(x=o, eps=(z - alpha * o) / sigma)


@register("v")
def from_v(o, z, t, process) -> Prediction:
  """VP only, v = alpha eps - sigma x: x_hat = alpha z - sigma o, eps_hat = sigma z + alpha o."""
  if process.is_flow:
    raise ValueError("The v parameterization needs a variance-preserving process.")
  alpha, sigma = _scales(z, t, process)
  return Prediction(x=alpha * z - sigma * o, eps=sigma * z + alpha * o)


@register("velocity")
def from_velocity(o, z, t, process) -> Prediction:
  """Flow only, u = eps - x: x_hat = z - t o, eps_hat = z + (1 - t) o."""
  if not process.is_flow:
    raise ValueError("The velocity parameterization needs the linear-flow process.")
  t = broadcast_to(t, z)
  return Prediction(x=z - t * o, eps=z + (1.0 - t) * o)


@register("signal")
def from_signal(o, z, t, process) -> Prediction:
  """BOOT's student g(eps, t): its z slot holds the noise eps (not z_t) and it predicts the
  signal y_t = (z_t - sigma_t eps) / alpha_t of the DDIM trajectory from z_1 = eps:
  x_hat = o, eps_hat = z. Any process; ddim_step(pred, alpha_t, sigma_t) is then z_t."""
  del t, process
  return Prediction(x=o, eps=z)


def v_target(x, eps, t, process):
  """v = alpha eps - sigma x (the network output that `from_v` inverts)."""
  alpha, sigma = _scales(x, t, process)
  return alpha * eps - sigma * x
