"""Samplers over the Denoiser interface.

Every sampler in `SAMPLERS` (look one up with `get_sampler(name)`) has the signature

  sampler(denoise, params, z, cond=None, *, process, num_steps, rng=None,
          time_grid="uniform", return_trajectory=False) -> out | (out, trajectory)

- denoise(params, z, t, cond) -> Prediction is called with a scalar t; cond is passed
  through unchanged (wrap `denoise` with `guided(denoise, w, num_classes)` for
  classifier-free guidance).
- z: the starting state, (B, ...). For the decoders (`ddim`, `ancestral`, `stochastic`,
  `euler`, `heun`, `rk4`, `consistency`) it is noise at t = 1 and `out` is the sample at
  t = 0; for `ddim_encode` it is data at t = 0 and `out` is its code at t = 1. Nested z (a
  Matryoshka model's one array per resolution) is a pytree of such arrays with `process` a
  pytree of processes like it: every step runs leaf by leaf with that leaf's own scales, the
  noise of step j is `sampling.noise.normal_like(fold_in(rng, j), z)` (the last leaf draws what
  a single array would), and `out` is a pytree like z.
- num_steps: N, the number of grid intervals. Network evaluations: `SAMPLERS[name].nfe(N)`
  (N for the DDIM family; 1 / 2 / 4 per interval for euler / heun / rk4 but 1 for the last
  one, a DDIM step; N - 1 for `ddim_encode`, whose first step uses the data itself). It may
  be a traced value unless return_trajectory.
- rng: a PRNG key, required by `ancestral`, `stochastic` and `consistency` (ignored by the
  others). The noise of step j is `normal(fold_in(rng, j), z.shape)`: drawn for the full batch, so with
  jax's (default) partitionable threefry the samples do not depend on how z is sharded.
- time_grid: a name in `GRIDS` ("uniform" t_i = i/N, "quadratic" t_i = (i/N)^2).
- return_trajectory: also return the N + 1 states (N + 1, B, ...), first = z, last = out;
  needs a static Python-int num_steps (lax.scan instead of lax.fori_loop).

End points. Steps of the DDIM family treat t = 0 as exactly (alpha, sigma) = (1, 0), so
their last step returns x_hat (for VP, alpha_0 ~ 1 - 1e-9 and sigma_0 ~ 4.5e-5 otherwise).
Nothing divides by alpha, so the flow's alpha(1) = 0 is fine. The ODE samplers integrate
dz/dt = alpha' x_hat + sigma' eps_hat in t with the process's own scales down to t_1 and
take a DDIM step from t_1 to 0 (as EDM's Heun does), so no sampler evaluates the denoiser
at t = 0, where eps_hat = (z - alpha x_hat) / sigma is ill-posed. That last first-order step
bounds rk4 to second order on the uniform grid (fourth on the quadratic grid, whose last
interval is 1/N^2); see tests/test_samplers.py.

Every sampler is pure jnp code: jit it with a NamedSharding batch and it runs sharded.
"""
from sampling.grids import GRIDS, get_grid
from sampling.guidance import guided
from sampling.samplers import SAMPLERS, Sampler, decoders, get_sampler
from sampling import consistency  # noqa: E402,F401  (registers the "consistency" sampler)

__all__ = ["GRIDS", "SAMPLERS", "Sampler", "decoders", "get_grid", "get_sampler", "guided"]
