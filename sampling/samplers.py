"""Samplers over a Denoiser, registered by name (see the package docstring for the contract).

Each sampler is one `lax.fori_loop` (or `lax.scan` when the trajectory is returned)
over its steps. Step j of a descending sampler goes from t_i to t_{i-1}, i = N - j.

The registry is the one place that says what a sampler costs and which way it goes: each
entry is a `Sampler` (callable like its function) with its network evaluations per step
and whether it maps data to noise; evaluation (NFE), the report and the sample drawing
read them from here.
"""
import dataclasses
import operator
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion.parameterization import Prediction
from diffusion.registry import Registry
from sampling import ode
from sampling.grids import resolve
from sampling.noise import normal_like
from sampling.steps import ancestral_step, ddim_step, scales, stochastic_step


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A registered sampler: `fn` (called through the record) and its cost and direction.

  evaluations_per_step: network evaluations of every step but the one at the data end;
  data_end_evaluations: those of the step that touches t = 0 (a decoder's last step, the
  encoder's first); maps_data_to_noise: an encoder (z is data at t = 0, out its code at t = 1).
  """
  fn: Callable
  evaluations_per_step: int = 1
  data_end_evaluations: int = 1
  maps_data_to_noise: bool = False

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)

  def nfe(self, num_steps: int) -> int:
    """Network evaluations of a num_steps-step run: per_step (N - 1) + data_end."""
    return self.evaluations_per_step * (num_steps - 1) + self.data_end_evaluations


SAMPLERS = Registry("sampler")
get_sampler = SAMPLERS.lookup


def register(name: str, **info):
  """Decorator: registers `fn` as SAMPLERS[name] = Sampler(fn, **info)."""

  def wrap(fn):
    SAMPLERS[name] = Sampler(fn, **info)
    return fn

  return wrap


def decoders() -> list[str]:
  """Names of the samplers that draw data from noise (every one but the encoders)."""
  return sorted(name for name, s in SAMPLERS.items() if not s.maps_data_to_noise)


def _run(body, z, lower, upper, return_trajectory):
  """z after body(j, z) for j = lower..upper-1; with the trajectory, also every state (stacked)."""
  if not return_trajectory:
    return jax.lax.fori_loop(lower, upper, body, z)
  try:
    indices = jnp.arange(operator.index(lower), operator.index(upper))
  except TypeError as e:
    raise ValueError("return_trajectory=True needs a static (not traced) num_steps.") from e
  step = lambda z, j: (body(j, z),) * 2
  final, states = jax.lax.scan(step, z, indices)
  return final, _prepend(z, states)


def _prepend(first, states):
  """[first; states]: one state before a stack of states, leaf by leaf (z may be a pytree)."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, states)


def _append(states, last):
  """[states; last]: one state after a stack of states, leaf by leaf."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), states, last)


def _noise(rng, j, z):
  """Full-batch standard normal noise for step j (same values however z is sharded), leaf by
  leaf for a pytree z (`normal_like`)."""
  if rng is None:
    raise ValueError("This sampler is stochastic: pass rng.")
  return normal_like(jax.random.fold_in(rng, j), z)


@register("ddim")
def ddim(denoise, params, z, cond=None, *, process, num_steps, rng=None,
         time_grid="uniform", return_trajectory=False):
  """Deterministic DDIM: z_s = alpha_s x_hat + sigma_s eps_hat, from t = 1 to 0."""
  del rng
  grid = resolve(time_grid)

  def body(j, z):
    i = num_steps - j
    pred = denoise(params, z, grid(i, num_steps), cond)
    return ddim_step(pred, *scales(process, grid(i - 1, num_steps)))

  return _run(body, z, 0, num_steps, return_trajectory)


@register("ancestral")
def ancestral(denoise, params, z, cond=None, *, process, num_steps, rng=None,
              time_grid="uniform", return_trajectory=False):
  """Ancestral sampling: z_s ~ q(z_s | z_t, x = x_hat) at every step (DDPM posterior)."""
  grid = resolve(time_grid)

  def body(j, z):
    i = num_steps - j
    t, s = grid(i, num_steps), grid(i - 1, num_steps)
    pred = denoise(params, z, t, cond)
    return ancestral_step(z, pred, *scales(process, t), *scales(process, s), _noise(rng, j, z))

  return _run(body, z, 0, num_steps, return_trajectory)


@register("stochastic")
def stochastic(denoise, params, z, cond=None, *, process, num_steps, rng=None,
               time_grid="uniform", return_trajectory=False):
  """Meng et al.'s N-step stochastic sampler: from t_i a DDIM jump to t_a = t_{i-2},
  then renoise back to t_b = t_{i-1}. The last step (i = 1, t_a clamped to t_0 = t_b = 0)
  is the deterministic DDIM step, since the renoise from 0 to 0 is the identity.
  """
  grid = resolve(time_grid)

  def body(j, z):
    i = num_steps - j
    t_a, t_b = grid(jnp.maximum(i - 2, 0), num_steps), grid(i - 1, num_steps)
    pred = denoise(params, z, grid(i, num_steps), cond)
    return stochastic_step(pred, *scales(process, t_a), *scales(process, t_b),
                           _noise(rng, j, z))

  return _run(body, z, 0, num_steps, return_trajectory)


@register("ddim_encode", data_end_evaluations=0, maps_data_to_noise=True)
def ddim_encode(denoise, params, x, cond=None, *, process, num_steps, rng=None,
                time_grid="uniform", return_trajectory=False):
  """DDIM encoder, data to noise: z_{t_{j+1}} = alpha x_hat(z_{t_j}) + sigma eps_hat(z_{t_j}).

  The first step, from t_0 = 0, uses the data itself: Prediction(x=x, eps=0), so z_{t_1} =
  alpha_{t_1} x (no network call at t = 0). Returns z at t = 1.
  """
  del rng
  grid = resolve(time_grid)

  def body(j, z):
    pred = denoise(params, z, grid(j, num_steps), cond)
    return ddim_step(pred, *scales(process, grid(j + 1, num_steps)))

  first = ddim_step(Prediction(x=x, eps=jax.tree.map(jnp.zeros_like, x)),
                    *scales(process, grid(1, num_steps)))
  out = _run(body, first, 1, num_steps, return_trajectory)
  if not return_trajectory:
    return out
  final, states = out
  return final, _prepend(x, states)


def _ode_sampler(name: str, tableau: ode.Tableau):
  """The probability-flow ODE sampler `name`: one Runge-Kutta step per grid interval from
  t = 1 down to t_1, then a DDIM step from t_1 to 0 (as EDM's Heun takes an Euler step
  there), so the network is never evaluated at t = 0, where eps_hat is ill-posed."""

  def sampler(denoise, params, z, cond=None, *, process, num_steps, rng=None,
              time_grid="uniform", return_trajectory=False):
    del rng
    grid = resolve(time_grid)
    f = lambda z, t: ode.velocity(denoise, params, z, t, cond, process)

    def body(j, z):
      i = num_steps - j
      t = grid(i, num_steps)
      return ode.rk_step(f, z, t, grid(i - 1, num_steps) - t, tableau)

    def last_step(z):
      pred = denoise(params, z, grid(1, num_steps), cond)
      return ddim_step(pred, *scales(process, grid(0, num_steps)))

    out = _run(body, z, 0, num_steps - 1, return_trajectory)
    if not return_trajectory:
      return last_step(out)
    final = last_step(out[0])
    return final, _append(out[1], final)

  sampler.__name__ = name
  sampler.__doc__ = (f"Probability-flow ODE sampler: {name} steps of dz/dt = alpha' x_hat + "
                     "sigma' eps_hat, the last interval a DDIM step.")
  return sampler


for _name, _tableau in ode.TABLEAUX.items():
  register(_name, evaluations_per_step=len(_tableau.b))(_ode_sampler(_name, _tableau))
