"""Time grids: t_i for i = 0..N, with t_0 = 0 (data) and t_N = 1 (noise).

A grid is a function `grid(i, n) -> t_i` of the step index and the step count,
so it works with a traced `n` (a sampler compiled once serves every N).
Samplers walk it from i = N down to 0; the DDIM encoder walks it upwards.
"""

import jax.numpy as jnp

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
