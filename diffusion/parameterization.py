"""Parameterizations: network output o -> Prediction(x_hat, eps_hat) given z_t.

Each function has the signature `fn(o, z, t, process) -> Prediction`, t of shape (B,).
A parameterization registered with `needs_flow` works on that kind of process only;
`check_supported` (called when a Denoiser is built) refuses the other pairs with the reason:
on the linear flow, eps divides by alpha = 1 - t (NaN at t = 1) and x by sigma = t (NaN at
t = 0); v is defined for variance-preserving processes; velocity u = eps - x = dz/dt is the
flow's. Any parameterization registered without `needs_flow` works on any process.
`signal_reading` turns a parameterization into BOOT's reading of a student that sees only noise.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion.processes import broadcast_to
from diffusion.registry import Registry


class Prediction(NamedTuple):
  """A denoiser's estimate of the clean data x and of the noise eps (pytrees like z for
  nested z, one leaf per resolution)."""
  x: jnp.ndarray
  eps: jnp.ndarray


def per_leaf_prediction(fn, process, *trees) -> Prediction:
  """Prediction(x=pytree, eps=pytree) from fn(process_r, *leaves_r) -> Prediction for every
  leaf r: `process` is one process (the trees are single arrays) or a pytree of processes with
  one per leaf of the trees (nested z)."""
  per_leaf = jax.tree.map(fn, process, *trees)
  is_prediction = lambda a: isinstance(a, Prediction)
  return Prediction(x=jax.tree.map(lambda p: p.x, per_leaf, is_leaf=is_prediction),
                    eps=jax.tree.map(lambda p: p.eps, per_leaf, is_leaf=is_prediction))


PARAMETERIZATIONS = Registry("parameterization")
get_parameterization = PARAMETERIZATIONS.lookup
# name -> (needs_flow, why): the process kind the parameterization needs and why.
REQUIREMENTS: dict[str, tuple[bool, str]] = {}


def register(name: str, *, needs_flow=None, why: str = ""):
  """Decorator: PARAMETERIZATIONS[name] = fn; needs_flow True (linear flow only) or False
  (variance-preserving only) with the reason `why`, or None (any process)."""

  def wrap(fn):
    PARAMETERIZATIONS[name] = fn
    if needs_flow is not None:
      REQUIREMENTS[name] = (needs_flow, why)
    return fn

  return wrap


def _process_kind(is_flow: bool) -> str:
  return "linear-flow" if is_flow else "variance-preserving"


def check_supported(name: str, process):
  """Raise a clear ValueError unless parameterization `name` works on `process`."""
  get_parameterization(name)
  needs_flow, why = REQUIREMENTS.get(name, (process.is_flow, ""))
  if needs_flow != process.is_flow:
    usable = sorted(n for n in PARAMETERIZATIONS
                    if REQUIREMENTS.get(n, (process.is_flow,))[0] == process.is_flow)
    raise ValueError(
        f"diffusion.parameterization={name!r} cannot be used with the "
        f"{_process_kind(process.is_flow)} process {type(process).__name__}: {why}. Use a "
        f"{_process_kind(needs_flow)} process, or one of {usable} on this one.")


def _scales(z, t, process):
  return process.alpha_sigma(broadcast_to(t, z))


@register("eps", needs_flow=False,
          why="x_hat = (z - sigma eps_hat) / alpha divides by alpha = 1 - t, which is 0 at t = 1 "
              "on the linear flow (x_hat is NaN at the first sampler step)")
def from_eps(o, z, t, process) -> Prediction:
  """eps_hat = o, x_hat = (z - sigma eps_hat) / alpha."""
  alpha, sigma = _scales(z, t, process)
  return Prediction(x=(z - sigma * o) / alpha, eps=o)


@register("x", needs_flow=False,
          why="eps_hat = (z - alpha x_hat) / sigma divides by sigma = t, which is 0 at t = 0 "
              "on the linear flow (eps_hat is NaN at the data end)")
def from_x(o, z, t, process) -> Prediction:
  """x_hat = o, eps_hat = (z - alpha x_hat) / sigma."""
  alpha, sigma = _scales(z, t, process)
  return Prediction(x=o, eps=(z - alpha * o) / sigma)


@register("v", needs_flow=False,
          why="x_hat = alpha z - sigma v inverts v = alpha eps - sigma x only when "
              "alpha^2 + sigma^2 = 1 (variance-preserving)")
def from_v(o, z, t, process) -> Prediction:
  """VP only, v = alpha eps - sigma x: x_hat = alpha z - sigma o, eps_hat = sigma z + alpha o."""
  alpha, sigma = _scales(z, t, process)
  return Prediction(x=alpha * z - sigma * o, eps=sigma * z + alpha * o)


@register("velocity", needs_flow=True,
          why="x_hat = z - t u, eps_hat = z + (1 - t) u hold for alpha = 1 - t, sigma = t "
              "(u = eps - x = dz/dt on the linear flow only)")
def from_velocity(o, z, t, process) -> Prediction:
  """Flow only, u = eps - x: x_hat = z - t o, eps_hat = z + (1 - t) o."""
  t = broadcast_to(t, z)
  return Prediction(x=z - t * o, eps=z + (1.0 - t) * o)


def signal_reading(name: str):
  """BOOT's reading of a student output o (DESIGN.md 5.5): fn(o, z, t, process) -> Prediction.

  The student's z slot holds the noise eps = z_1, whatever its time input t, so o is read
  through parameterization `name` at the time of what is in that slot, t = 1: x_hat =
  from_<name>(o, eps, 1).x (v: alpha_1 eps - sigma_1 o; x: o; velocity: eps - o), eps_hat = eps.
  A student copied from a `name` teacher then starts with g(eps, 1) = f_T(eps, 1) exactly.
  Read at t instead (v: alpha_t eps - sigma_t o), g(eps, 0) = eps - sigma_0 o would be the noise
  itself up to sigma_0 ~ 4.5e-5 (cosine), i.e. no output could reach the sample. eps is refused:
  its x at t = 1 is (eps - sigma_1 o) / alpha_1, a division by alpha_1 ~ 4.5e-5."""
  if name == "eps":
    raise ValueError(
        "BOOT reads its student's output through the teacher's parameterization at t = 1 with "
        "eps in the z slot; for an eps-parameterised teacher that is x = (eps - sigma_1 o) / "
        "alpha_1, a division by alpha_1 (4.5e-5 on the cosine schedule), so it cannot start as "
        "its teacher. Distil a v-, x- or velocity-parameterised teacher "
        "(diffusion.parameterization).")
  read = get_parameterization(name)

  def from_signal(o, z, t, process) -> Prediction:
    return Prediction(x=read(o, z, jnp.ones_like(t), process).x, eps=z)

  return from_signal


def v_target(x, eps, t, process):
  """v = alpha eps - sigma x (the network output that `from_v` inverts)."""
  alpha, sigma = _scales(x, t, process)
  return alpha * eps - sigma * x
