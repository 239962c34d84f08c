"""Noise processes: z_t = alpha_t x + sigma_t eps, t in [0, 1] (0 = data, 1 = noise).

A process is a frozen dataclass (hashable, so it can be a static jit argument)
with pure methods of t. `lambda_t = log(alpha_t^2 / sigma_t^2)` is the logSNR.
"""
import abc
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

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


@functools.lru_cache(maxsize=8)
def ddpm_alpha_bars(beta_schedule: str, beta_start: float, beta_end: float,
                    num_train_timesteps: int) -> np.ndarray:
  """alpha_bar_k = prod_{j <= k} (1 - beta_j), k = 0..T-1, with DDPM's betas (float64):
  linear: beta_k = linspace(beta_start, beta_end, T); scaled_linear: linspace(sqrt(beta_start),
  sqrt(beta_end), T)^2; squaredcos_cap_v2: beta_k = min(1 - f((k+1)/T) / f(k/T), 0.999),
  f(s) = cos((s + 0.008) / 1.008 pi / 2)^2 (Nichol & Dhariwal)."""
  n = num_train_timesteps
  if beta_schedule == "linear":
    betas = np.linspace(beta_start, beta_end, n)
  elif beta_schedule == "scaled_linear":
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n) ** 2
  elif beta_schedule == "squaredcos_cap_v2":
    f = lambda s: np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2
    k = np.arange(n)
    betas = np.minimum(1.0 - f((k + 1) / n) / f(k / n), 0.999)
  else:
    raise ValueError(f"beta_schedule {beta_schedule!r} is not one of 'linear', "
                     f"'scaled_linear', 'squaredcos_cap_v2'.")
  return np.cumprod(1.0 - betas)


@register("ddpm")
@dataclasses.dataclass(frozen=True)
class DiscreteDDPM(Process):
  """A discrete-time DDPM (T steps, alpha_bar_k from its betas) in continuous t in [0, 1].

  Step k sits at t = (k + 1) / T, so the network's timestep is k = t T - 1: t = 1 is k = T-1,
  an N-step uniform grid (N dividing T) evaluates the network only at the integer steps it was
  trained on (diffusers' 'trailing' spacing), and t = 0 is the data itself (alpha_bar = 1,
  diffusers' final_alpha_cumprod). lambda(t) is linear in t between the steps'
  lambda_k = log(alpha_bar_k / (1 - alpha_bar_k)): exact at every step, monotone, so
  time_of_logsnr inverts it exactly; below the first step, sigma^2 = t T (1 - alpha_bar_0)
  (linear from the data, lambda -> +inf at t = 0).
  """
  beta_schedule: str = "linear"
  beta_start: float = 1e-4
  beta_end: float = 0.02
  num_train_timesteps: int = 1000

  def _table(self):
    """(lambda_k for k = 0..T-1, 1 - alpha_bar_0), as float32 constants."""
    alpha_bars = ddpm_alpha_bars(self.beta_schedule, self.beta_start, self.beta_end,
                                 self.num_train_timesteps)
    lam = np.log(alpha_bars) - np.log1p(-alpha_bars)
    return jnp.asarray(lam, jnp.float32), float(1.0 - alpha_bars[0])

  def network_time(self, t):
    """diffusers' timestep k = t T - 1 (fractional between steps)."""
    return jnp.asarray(t, jnp.float32) * self.num_train_timesteps - 1.0

  def logsnr(self, t):
    lam, sigma2_0 = self._table()
    k = self.network_time(t)
    sigma2 = jnp.maximum(k + 1.0, 0.0) * sigma2_0   # the piece below the first step
    first = jnp.log1p(-sigma2) - jnp.log(sigma2)
    return jnp.where(k < 0.0, first, jnp.interp(k, jnp.arange(lam.shape[0]), lam))

  def alpha_sigma(self, t):
    lam = self.logsnr(t)
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))

  def time_of_logsnr(self, logsnr):
    """Inverse of logsnr: k by linear interpolation in the (decreasing) lambda_k, t = (k+1)/T;
    above lambda_0, t = sigmoid(-lambda) / (T (1 - alpha_bar_0))."""
    lam, sigma2_0 = self._table()
    logsnr = jnp.asarray(logsnr, jnp.float32)
    steps = jnp.arange(lam.shape[0], dtype=jnp.float32)
    k = jnp.interp(logsnr, lam[::-1], steps[::-1])
    t = jnp.where(logsnr > lam[0], jax.nn.sigmoid(-logsnr) / sigma2_0 - 1.0, k) + 1.0
    return jnp.clip(t / self.num_train_timesteps, 0.0, 1.0)
