"""Time grids: t_i for i = 0..N, with t_0 = 0 (data) and t_N = 1 (noise).

A grid is a function `grid(i, n) -> t_i` of the step index and the step count,
so it works with a traced `n` (a sampler compiled once serves every N).
Samplers walk it from i = N down to 0; the DDIM encoder walks it upwards.
`resolve` also takes a grid function itself (the consistency sampler's `on_training_grid`).
"""

import jax.numpy as jnp

from diffusion.processes import karras_logsnr
from diffusion.registry import Registry

GRIDS = Registry("time grid")
register = GRIDS.register
get_grid = GRIDS.lookup


def _fraction(i, n):
  return jnp.asarray(i, jnp.float32) / jnp.asarray(n, jnp.float32)


@register("uniform")
def uniform(i, n):
  """t_i = i / N."""
  return _fraction(i, n)


@register("quadratic")
def quadratic(i, n):
  """t_i = (i / N)^2 (finer steps near the data end)."""
  return _fraction(i, n) ** 2


def resolve(time_grid):
  """A grid function: `time_grid` itself if callable, else GRIDS[time_grid]."""
  return time_grid if callable(time_grid) else get_grid(time_grid)


def karras(process, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
  """EDM's rho-grid (Karras et al. 2022, eq. (5); consistency models' training grid) in
  `process`'s time: t_0 = 0 (the data end, the consistency boundary) and for i = 1..N

    t_i = process.time_of_logsnr(-2 log sigma_i),
    sigma_i = (sigma_min^(1/rho) + (i - 1)/(N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho,

  with sigma = sigma_t / alpha_t, so N intervals are the paper's N points (t_1 = sigma_min,
  t_N = sigma_max: below t = 1 on a VP process, where z_1 ~ N(0, I) is read as z at t_N
  as the paper reads T z as x at T = 80)."""
  def grid(i, n):
    u = (jnp.asarray(i, jnp.float32) - 1.0) / jnp.maximum(jnp.asarray(n, jnp.float32) - 1.0, 1.0)
    t = process.time_of_logsnr(karras_logsnr(u, sigma_min, sigma_max, rho))
    return jnp.where(jnp.asarray(i) <= 0, 0.0, t)

  return grid


def check_on_training_grid(num_steps: int, num_train: int, ts=()) -> None:
  """Raise unless a num_steps-step sampler stays on an N = num_train grid: num_steps divides
  N, or num_steps = len(ts) (explicit indices)."""
  if num_steps < 1 or (num_train % num_steps and num_steps != len(ts)):
    raise ValueError(f"{num_steps} sampling steps leave the N = {num_train} training grid: "
                     f"use a step count that divides {num_train}, or list {num_steps} grid "
                     f"indices (consistency.sample_ts).")


def on_training_grid(grid, num_train: int, ts=()):
  """The grid function of a sampler that visits only points of `grid` at N = num_train.

  n steps visit t_{N - r_j} for the indices r_0 = 0 < r_1 < ... < r_{n-1} counted from the
  noise end (the reference's `--ts`, there followed by its last index, the boundary): r_j =
  ts[j] when n = len(ts), else j N / n (n must divide N: `check_on_training_grid`, since n
  may be traced). The returned g(i, n) is grid(N - r_{n-i}, N), g(0, n) = grid(0, N) = 0."""
  table = jnp.asarray([0] + [num_train - r for r in reversed(tuple(ts))], jnp.int32)

  def g(i, n):
    i = jnp.asarray(i, jnp.int32)
    index = i * (num_train // jnp.asarray(n, jnp.int32))
    if ts:
      index = jnp.where(n == len(ts), table[jnp.clip(i, 0, len(ts))], index)
    return grid(index, num_train)

  return g
