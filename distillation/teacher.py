"""Teacher training (DESIGN.md 5.1): the weighted denoising loss at t ~ U(0, 1).

loss = E_t,eps w(lambda_t) ||x - x_hat(z_t, t, c)||^2, z_t = alpha_t x + sigma_t eps;
class-conditional models replace the label by the null class with probability p_uncond.
"""
import jax
import jax.numpy as jnp

from diffusion.losses import weighted_x_mse
from diffusion.networks import build_denoiser, init_params
from distillation.common import training_cond
from training.method import Method, Stage, register


class FromData(Method):
  """Base of the methods that train a fresh `self.network` from data, with nothing frozen,
  in one stage of `num_train_steps` updates sampled with `sample.num_steps` (the teacher,
  flow matching and Catch-Up, Matryoshka)."""

  def init(self, rng, teacher_params=None):
    return init_params(self.network, rng, self.config.data.shape)

  def init_frozen(self, teacher_params=None):
    return {}

  def stages(self):
    return [Stage(self.config.num_train_steps, {"num_steps": self.config.sample.num_steps})]


@register("teacher")
class TeacherTraining(FromData):
  """Trains a diffusion model from data; one stage of `num_train_steps` updates."""

  def __init__(self, config):
    super().__init__(config)
    self.network, self.process, self.denoise = build_denoiser(config)

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    x = batch["image"]
    t_rng, eps_rng, drop_rng, cond_rng = jax.random.split(rng, 4)
    t = jax.random.uniform(t_rng, x.shape[:1])
    eps = jax.random.normal(eps_rng, x.shape)
    z = self.process.noise(x, t, eps)
    cond = training_cond(self.config, batch, cond_rng)
    pred = self.denoise(params, z, t, cond, rng=drop_rng)
    losses = weighted_x_mse(x, pred.x, self.process.logsnr(t), self.config.diffusion.weighting)
    return jnp.mean(losses), {"loss": jnp.mean(losses)}
