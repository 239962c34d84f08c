"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1),
registered as the sampler "consistency" (the contract of sampling/__init__.py).

A consistency function f(z_t, t) maps any point of a probability-flow trajectory to the
trajectory's point at the boundary t_min = 0, z_0 = alpha_0 x + sigma_0 eps (EDM's x_eps).
With the grid t_N = 1 > t_{N-1} > ... > t_0 = 0:

  x = f(z_1, 1);  for i = N-1, ..., 1:  z = (alpha_i / alpha_0) x
                  + sqrt(sigma_i^2 - (alpha_i / alpha_0)^2 sigma_0^2) xi,  x = f(z, t_i),

the renoising being `sampling.steps.renoise_step` from the boundary (in EDM's sigma:
x + sqrt(t_i^2 - eps^2) xi, as the reference's `stochastic_iterative_sampler`). One network
evaluation per step; N = 1 is the one-step sampler x = f(z_1, 1). For any other Denoiser
its x_hat plays f. `time_grid` may be a grid function: a consistency student samples
`sampling.grids.on_training_grid` of its training grid (the reference's `ts` are indices
into it; a student is not trained between its points). The reference clamps x to [-1, 1] before renoising: through
training.samples.sample_images that is `sample.clip_x` (sampling.clipping).
"""
from sampling.grids import resolve
from sampling.samplers import _noise, _run, register
from sampling.steps import renoise_step, scales


@register("consistency")
def consistency(denoise, params, z, cond=None, *, process, num_steps, rng=None,
                time_grid="uniform", return_trajectory=False):
  """Multistep consistency sampling from z at t = 1 (module docstring); stochastic (rng)."""
  grid = resolve(time_grid)
  boundary = process.alpha_sigma(0.0)

  def body(j, z):
    i = num_steps - j
    x = denoise(params, z, grid(i, num_steps), cond).x
    return renoise_step(x, *boundary, *scales(process, grid(i - 1, num_steps)),
                        _noise(rng, j, z))

  return _run(body, z, 0, num_steps, return_trajectory)
