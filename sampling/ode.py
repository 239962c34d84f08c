"""The probability-flow ODE and explicit Runge-Kutta steps for it.

For z_t = alpha_t x + sigma_t eps the probability-flow ODE is
dz/dt = alpha'(t) x_hat(z, t) + sigma'(t) eps_hat(z, t), for any process
(on the linear flow: dz/dt = eps_hat - x_hat = u). We integrate it in t; the
scale derivatives come from `jax.jvp` of `process.alpha_sigma`, so any process
works without hand-written derivatives. For the cosine schedule alpha = cos(a t + b)
and sigma = sin(a t + b), so the flow is smooth in t on all of [0, 1].
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


def velocity(denoise, params, z, t, cond, process):
  """dz/dt = alpha'(t) x_hat + sigma'(t) eps_hat at a scalar time t (leaf by leaf for a pytree
  z, with a pytree of processes like it)."""
  t = jnp.asarray(t, jnp.float32)
  pred = denoise(params, z, t, cond)

  def one(process, x, eps):
    _, (dalpha, dsigma) = jax.jvp(process.alpha_sigma, (t,), (jnp.ones_like(t),))
    return dalpha * x + dsigma * eps

  return jax.tree.map(one, process, pred.x, pred.eps)


class Tableau(NamedTuple):
  """Butcher tableau of an explicit method: rows of a (lower triangle), weights b, nodes c."""
  a: tuple
  b: tuple
  c: tuple


TABLEAUX = {
    "euler": Tableau(a=((),), b=(1.0,), c=(0.0,)),
    "heun": Tableau(a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0)),
    "rk4": Tableau(a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                   b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), c=(0.0, 0.5, 0.5, 1.0)),
}


def _combine(z, h, coefficients, ks):
  """z + h sum_j coefficients_j k_j (zero coefficients skipped), leaf by leaf."""
  return jax.tree.map(lambda z, *ks: z + h * sum(c * k for c, k in zip(coefficients, ks) if c),
                      z, *ks)


def rk_slope(f, z, t, h, tableau: Tableau, k1=None):
  """The slope sum_i b_i k_i of one explicit Runge-Kutta step, k_i = f(z + h sum_j a_ij k_j,
  t + c_i h), so the step is z + h * slope; `k1` = f(z, t) when the caller already has it.
  h may be an array broadcasting against z (then t should broadcast against z as well)."""
  ks = [] if k1 is None else [k1]
  for row, c in zip(tableau.a[len(ks):], tableau.c[len(ks):]):
    ks.append(f(_combine(z, h, row, ks), t + c * h))
  return jax.tree.map(lambda *ks: sum(b * k for b, k in zip(tableau.b, ks) if b), *ks)


def rk_step(f, z, t, h, tableau: Tableau):
  """One explicit Runge-Kutta step of dz/dt = f(z, t) from t to t + h (h may be negative).

  k_i = f(z + h sum_j a_ij k_j, t + c_i h), z_{t+h} = z + h sum_i b_i k_i.
  """
  return jax.tree.map(lambda z, slope: z + h * slope, z, rk_slope(f, z, t, h, tableau))
