"""x-clipping as a Denoiser transform (the reference progressive-distillation code's
`clip_x` at evaluation, `eval_clip_denoised`): x_hat is clipped to the data range and eps_hat
made consistent with it,

  x_hat_c = clip(x_hat, -1, 1),   eps_hat_c = (z - alpha_t x_hat_c) / sigma_t,

so every sampler step uses the clipped x_hat. Only samplers use it (`sample.clip_x`);
distillation targets stay unclipped, as the reference's training losses run unclipped.
Needs sigma_t > 0: no sampler evaluates the network at the flow's t = 0.
"""
import jax.numpy as jnp

from diffusion.denoiser import Denoiser
from diffusion.parameterization import Prediction, per_leaf_prediction
from diffusion.processes import broadcast_to


def clipped(denoise: Denoiser, process, low: float = -1.0, high: float = 1.0) -> Denoiser:
  """The Denoiser whose x_hat is clip(x_hat, low, high) and eps_hat = (z - alpha x_hat) / sigma."""

  def denoise_clipped(params, z, t, cond=None) -> Prediction:
    def one(process, z, x):   # leaf by leaf for nested z, each with its own process
      x = jnp.clip(x, low, high)
      alpha, sigma = process.alpha_sigma(broadcast_to(t, z))
      return Prediction(x=x, eps=(z - alpha * x) / sigma)

    return per_leaf_prediction(one, process, z, denoise(params, z, t, cond).x)

  return denoise_clipped
