"""Single sampler steps: pure functions of (z, Prediction, alpha/sigma, noise).

alpha and sigma are scalars or arrays that broadcast against z (for per-example
times use `scales(process, broadcast_to(t, z))`). Every step that lands on the
data end t = 0, where `scales` gives exactly (alpha, sigma) = (1, 0), returns
x_hat itself.

Nested z (Matryoshka: a pytree with one array per resolution) goes through the same steps
leaf by leaf: `process` is then a pytree of processes like z, `scales` gives pytrees of alpha
and sigma, the Prediction holds pytrees like z, and each leaf is stepped with its own scales.
"""
import jax
import jax.numpy as jnp

from diffusion.parameterization import Prediction


def scales(process, t):
  """(alpha_t, sigma_t) of `process`, with the data end t = 0 taken as exactly (1, 0); for a
  pytree of processes, (pytree of alpha_t, pytree of sigma_t)."""
  def one(process):
    alpha, sigma = process.alpha_sigma(t)
    data_end = jnp.asarray(t) == 0
    return jnp.where(data_end, 1.0, alpha), jnp.where(data_end, 0.0, sigma)

  return jax.tree.transpose(jax.tree.structure(process), jax.tree.structure((0, 0)),
                            jax.tree.map(one, process))


def ddim_step(pred: Prediction, alpha_s, sigma_s):
  """Deterministic DDIM to time s (either direction): z_s = alpha_s x_hat + sigma_s eps_hat."""
  return jax.tree.map(lambda x, eps, alpha_s, sigma_s: alpha_s * x + sigma_s * eps,
                      pred.x, pred.eps, alpha_s, sigma_s)


def ancestral_step(z_t, pred: Prediction, alpha_t, sigma_t, alpha_s, sigma_s, noise):
  """Sample the posterior q(z_s | z_t, x = x_hat) for s < t.

  alpha_ts = alpha_t / alpha_s, sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2;
  mean = alpha_ts sigma_s^2 / sigma_t^2 z_t + alpha_s sigma_ts^2 / sigma_t^2 x_hat,
  variance = sigma_ts^2 sigma_s^2 / sigma_t^2. Valid whenever sigma/alpha grows
  with t (VP and the linear flow; alpha_t = 0 at the flow's t = 1 is fine).
  """
  def one(z_t, x_hat, alpha_t, sigma_t, alpha_s, sigma_s, noise):
    alpha_ts = alpha_t / alpha_s
    sigma_ts2 = jnp.maximum(sigma_t**2 - alpha_ts**2 * sigma_s**2, 0.0)
    mean = (alpha_ts * sigma_s**2 * z_t + alpha_s * sigma_ts2 * x_hat) / sigma_t**2
    return mean + jnp.sqrt(sigma_ts2 * sigma_s**2 / sigma_t**2) * noise

  return jax.tree.map(one, z_t, pred.x, alpha_t, sigma_t, alpha_s, sigma_s, noise)


def renoise_step(z_a, alpha_a, sigma_a, alpha_b, sigma_b, noise):
  """Forward kernel q(z_b | z_a) for b >= a (needs alpha_a > 0).

  z_b = (alpha_b / alpha_a) z_a + sqrt(sigma_b^2 - (alpha_b / alpha_a)^2 sigma_a^2) xi;
  it maps the marginal at a exactly to the marginal at b.
  """
  def one(z_a, alpha_a, sigma_a, alpha_b, sigma_b, noise):
    ratio = alpha_b / alpha_a
    return ratio * z_a + jnp.sqrt(jnp.maximum(sigma_b**2 - ratio**2 * sigma_a**2, 0.0)) * noise

  return jax.tree.map(one, z_a, alpha_a, sigma_a, alpha_b, sigma_b, noise)


def stochastic_step(pred: Prediction, alpha_a, sigma_a, alpha_b, sigma_b, noise):
  """Meng et al.'s stochastic step: DDIM jump to t_a, then renoise back up to t_b >= t_a.

  z_a = alpha_a x_hat + sigma_a eps_hat,
  z_b = (alpha_b / alpha_a) z_a + sqrt(sigma_b^2 - (alpha_b / alpha_a)^2 sigma_a^2) xi.
  """
  z_a = ddim_step(pred, alpha_a, sigma_a)
  return renoise_step(z_a, alpha_a, sigma_a, alpha_b, sigma_b, noise)
