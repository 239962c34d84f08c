"""Noise processes: z_t = alpha_t x + sigma_t eps, t in [0, 1] (0 = data, 1 = noise).

A process is a frozen dataclass (hashable, so it can be a static jit argument)
with pure methods of t. `lambda_t = log(alpha_t^2 / sigma_t^2)` is the logSNR.
"""
import abc
import dataclasses
import jax
import jax.numpy as jnp

from diffusion.registry import Registry

PROCESSES = Registry("process")
register = PROCESSES.register


def get_process(name: str, **kwargs) -> "Process":
  return PROCESSES.lookup(name)(**kwargs)


def broadcast_to(t, x):
  """Reshape a per-example (B,) array so it broadcasts against x of shape (B, ...)."""
  t = jnp.asarray(t)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


class Process(abc.ABC):
  """Base class: subclasses define `logsnr(t)` and `alpha_sigma(t)`."""

  is_flow = False

  @abc.abstractmethod
  def logsnr(self, t):
    """lambda_t = log(alpha_t^2 / sigma_t^2)."""

  @abc.abstractmethod
  def alpha_sigma(self, t):
    """(alpha_t, sigma_t)."""

  def network_time(self, t):
    """The scalar the network is conditioned on (its time embedding input)."""
    return self.logsnr(t)

  @abc.abstractmethod
  def time_of_logsnr(self, logsnr):
    """The t in [0, 1] with lambda_t = logsnr (the inverse schedule; clipped to [0, 1])."""

  def noise(self, x, t, eps):
    """z_t = alpha_t x + sigma_t eps, with t of shape (B,)."""
    alpha, sigma = self.alpha_sigma(broadcast_to(t, x))
    return alpha * x + sigma * eps


@register("cosine")
@dataclasses.dataclass(frozen=True)
class CosineVP(Process):
  """Variance-preserving cosine schedule, optionally shifted (Matryoshka).

  lambda(t) = -2 log tan(a t + b) - shift, b = arctan(exp(-lambda_max / 2)),
  a = arctan(exp(-lambda_min / 2)) - b; alpha^2 = sigmoid(lambda),
  sigma^2 = sigmoid(-lambda). `shift = p log(s)` for resolution ratio s.
  """
  logsnr_min: float = -20.0
  logsnr_max: float = 20.0
  shift: float = 0.0

  def logsnr(self, t):
    b = jnp.arctan(jnp.exp(-0.5 * self.logsnr_max))
    a = jnp.arctan(jnp.exp(-0.5 * self.logsnr_min)) - b
    return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b)) - self.shift

  def alpha_sigma(self, t):
    lam = self.logsnr(t)
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))

  def time_of_logsnr(self, logsnr):
    """t = (arctan(exp(-(lambda + shift) / 2)) - b) / a."""
    b = jnp.arctan(jnp.exp(-0.5 * self.logsnr_max))
    a = jnp.arctan(jnp.exp(-0.5 * self.logsnr_min)) - b
    lam = jnp.asarray(logsnr, jnp.float32) + self.shift
    return jnp.clip((jnp.arctan(jnp.exp(-0.5 * lam)) - b) / a, 0.0, 1.0)


def shifted_cosine(resolution: int, base_resolution: int, power: float = 1.0,
                   **kwargs) -> CosineVP:
  """Matryoshka shift: lambda_r(t) = lambda(t) - p log(resolution / base)."""
  return CosineVP(shift=power * float(jnp.log(resolution / base_resolution)), **kwargs)


@register("flow")
@dataclasses.dataclass(frozen=True)
class LinearFlow(Process):
  """Rectified flow: alpha = 1 - t, sigma = t; velocity u = eps - x = dz/dt."""
  is_flow = True

  def logsnr(self, t):
    t = jnp.asarray(t, jnp.float32)
    return 2.0 * (jnp.log1p(-t) - jnp.log(t))

  def alpha_sigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    return 1.0 - t, t

  def network_time(self, t):
    return jnp.asarray(t, jnp.float32)

  def time_of_logsnr(self, logsnr):
    """t = sigmoid(-lambda / 2) (sigma / alpha = t / (1 - t) = exp(-lambda / 2))."""
    return jax.nn.sigmoid(-0.5 * jnp.asarray(logsnr, jnp.float32))


def karras_logsnr(u, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
  """logSNR of the EDM (Karras et al. 2022) noise ladder at position u in [0, 1]:

  sigma(u) = (sigma_min^(1/rho) + u (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, with
  sigma = sigma_t / alpha_t, so lambda = -2 log sigma (u = 0: sigma_min, u = 1: sigma_max).
  """
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return -2.0 * rho * jnp.log(lo + jnp.asarray(u, jnp.float32) * (hi - lo))
