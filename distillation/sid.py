"""Score identity Distillation (SiD; Zhou, Zheng, Wang, Yin & Huang, ICML 2024,
arXiv 2404.04057; DESIGN.md 5.8), after the authors' code mingyuanzhou/SiD
(training/sid_loss.py `SID_EDMLoss`, training/sid_training_loop.py).

Data-free. Three networks of one architecture, two of them trained, both initialised from
the teacher f_phi and kept in ONE parameter tree {'generator': theta, 'fake_score': psi}:

- the one-step generator reads pure noise at the noise level t_init:
    x_g = G_theta(eps, c) = x_hat_theta(sigma_{t_init} eps, t_init, c),  eps ~ N(0, I)
  (the code feeds init_sigma * eps at EDM noise level init_sigma = 2.5; in VP terms that is
  z = sigma_t eps at lambda_{t_init} = -2 log init_sigma);
- the fake score f_psi learns the score of the generator's distribution with the teacher's
  own denoising loss on generated images (paper Sec. 4, `SID_EDMLoss.__call__`):
    L_psi = w(lambda_s) || f_psi(alpha_s SG(x_g) + sigma_s n, s, c) - SG(x_g) ||^2;
- the generator loss, the paper's fused loss L_theta^(2) - alpha L_theta^(1) with its
  omega(t) weighting (Sec. 4, `SID_EDMLoss.generator_loss`), at
  x_t = alpha_t x_g + sigma_t eps', eps' FRESH noise (not the generator's input):
    L_theta = omega (f_phi(x_t) - f_psi(x_t))^T [(f_phi(x_t) - x_g) - alpha (f_phi(x_t) - f_psi(x_t))],
    omega = 1 / SG(max(mean |x_g - f_phi(x_t)|, 1e-5)),   alpha = 1.2;
  theta's gradient flows through x_g, also via x_t into BOTH x-predictions; psi is held
  (SG) and the teacher is frozen. t sits on the EDM noise ladder at u ~ U(0, t_max),
  t_max = 0.8 (the code's tmax = 800 of 1000): sigma(u) = (sigma_min^(1/7) +
  u (sigma_max^(1/7) - sigma_min^(1/7)))^7, sigma in [0.002, 80], lambda = -2 log sigma.

One train step minimises mean L_theta + mean L_psi: the stop-gradients make the first move
only theta and the second only psi, so one gradient gives both networks' updates (per-network
learning rates via `lr_scales`). Guided teachers as in BOOT (distillation.data_free: uniform
labels and per-example w drawn in the loss, f_phi the guided x-prediction); G and f_psi get
the same cond.

Where this differs from the reference code:
- The code alternates: it updates psi, then theta against the UPDATED psi, each on its own
  generator draw. Here both updates come from one gradient at the same (theta, psi) and share
  one generator noise eps (DESIGN.md 5.8 allows joint updates): 1 teacher + 3 network
  forwards per step, 4 with dropout: the fake score learns from G(eps) drawn in inference
  mode (the code's G is in eval mode during the fake score's update); without dropout that
  draw is x_g's computation again.
- The code trains its fake score with its EDM teacher's loss (sigma = exp(-1.2 + 1.2 n),
  weight 1/sigma^2 + 1/0.5^2). Here the fake score uses this project's teacher loss:
  `fake_score_time='uniform'` (t ~ U(0, 1)) with `fake_score_weighting` (the teacher's), or
  the code's choice: 'lognormal' (lambda = -2 (p_mean + p_std n)) with weighting 'edm'.
- Per-example losses are means over pixels (the code sums them, and scales L_theta by 100):
  constant factors that Adam (b1 = 0, b2 = 0.999, no gradient clipping in the presets) ignores
  where sqrt(v) >> eps = 1e-8. Measured on digits (200 updates of configs/sid.py:digits):
  sqrt(v_hat) has median 3.8e-5 (generator) and 1.4e-4 (fake score), 1st percentile 1.9e-6
  and 1.7e-5, and is below 1e-6 (eps over 1% of it) for 0.44% and 0.07% of the parameters,
  so the scale is kept.
- The code drops examples with a NaN; the trainer skips a non-finite update instead. The
  code's ADA augmentation of the fake score's inputs (CIFAR-10, p = 0.12) is not done.
"""
import dataclasses

import jax
import jax.numpy as jnp

from diffusion.losses import mean_per_example, weighted_x_mse
from diffusion.networks import build_denoiser, init_params
from diffusion.processes import karras_logsnr
from diffusion.registry import Registry
from distillation.common import check_teacher, require_sections
from distillation.data_free import DataFreeConditioning, example_keys, per_example
from distillation.guided import embed_params
from training.method import Method, Stage, register
from training.samples import initial_noise, sample_cond

# Noise levels of the fake score's denoising loss: fn(key, process, settings) -> one t.
FAKE_SCORE_TIMES = Registry("sid.fake_score_time")
FAKE_SCORE_TIMES.update({
    "uniform": lambda key, process, settings: jax.random.uniform(key),
    "lognormal": lambda key, process, settings: process.time_of_logsnr(
        -2.0 * (settings.p_mean + settings.p_std * jax.random.normal(key))),
})


@dataclasses.dataclass(frozen=True)
class SiDSettings:
  """The `sid` config section's loss settings (see the module docstring)."""
  alpha: float = 1.2
  tmax: float = 0.8
  init_sigma: float = 2.5
  fake_score_time: str = "uniform"
  p_mean: float = -1.2
  p_std: float = 1.2
  fake_score_weighting: str = "snr+1"

  @classmethod
  def from_config(cls, section) -> "SiDSettings":
    settings = cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})
    FAKE_SCORE_TIMES.lookup(settings.fake_score_time)   # a clear error for an unknown name
    if not 0.0 < settings.tmax <= 1.0:
      raise ValueError(f"sid.tmax={settings.tmax} must lie in (0, 1] (the code's tmax / 1000).")
    if settings.init_sigma <= 0:
      raise ValueError(f"sid.init_sigma={settings.init_sigma} must be positive.")
    return settings


def init_time(process, init_sigma: float):
  """t_init: the t with lambda_t = -2 log init_sigma (the generator's noise level)."""
  return process.time_of_logsnr(-2.0 * jnp.log(jnp.asarray(init_sigma, jnp.float32)))


def generate(denoise, params, eps, cond, process, init_sigma: float, rng=None):
  """x_g = x_hat(sigma_{t_init} eps, t_init, c): the generator's one step from noise eps."""
  t = jnp.broadcast_to(init_time(process, init_sigma), eps.shape[:1])
  _, sigma = process.alpha_sigma(t)
  return denoise(params, sigma.reshape((-1,) + (1,) * (eps.ndim - 1)) * eps, t, cond,
                 rng=rng).x


def generator_time(key, process, tmax: float):
  """One t of the generator loss: the EDM noise ladder (karras_logsnr) at u ~ U(0, tmax)."""
  return process.time_of_logsnr(karras_logsnr(tmax * jax.random.uniform(key)))


def sid_generator_loss(x_g, x_real, x_fake, alpha: float):
  """Per-example omega (x_real - x_fake) . ((x_real - x_g) - alpha (x_real - x_fake)), (B,).

  x_real = f_phi(x_t), x_fake = f_psi(x_t); omega = 1 / SG(max(mean |x_g - x_real|, 1e-5));
  the product is averaged over pixels. At alpha = 1 it is (x_real - x_fake) . (x_fake - x_g).
  """
  delta = x_real - x_fake
  weight = jax.lax.stop_gradient(jnp.maximum(mean_per_example(jnp.abs(x_g - x_real)), 1e-5))
  return mean_per_example(delta * ((x_real - x_g) - alpha * delta)) / weight


def denoising_loss(denoise, params, x_0, s, noise, process, weighting: str, cond=None,
                   rng=None):
  """The fake score's loss L_psi per example, (B,) (paper Sec. 4, the code's
  `SID_EDMLoss.__call__`): w(lambda_s) mean_pixels ||f_psi(alpha_s x_0 + sigma_s n, s) - x_0||^2.

  With lambda_s = -2 (p_mean + p_std n') ('lognormal') and w = 'edm' = exp(lambda) + 1 / 0.5^2
  it is the code's EDM loss (sigma^2 + 0.5^2) / (0.5 sigma)^2 ||D(x_0 + sigma n, sigma) - x_0||^2
  at sigma = exp(-lambda_s / 2), averaged over pixels instead of summed.
  """
  x_hat = denoise(params, process.noise(x_0, s, noise), s, cond, rng=rng).x
  return weighted_x_mse(x_0, x_hat, process.logsnr(s), weighting)


def sid_losses(denoise, teacher, params, teacher_params, cond, keys, rng, process,
               settings: SiDSettings, shape):
  """Per-example (L_theta, L_psi), each (B,), from one generator draw x_g = G_theta(eps).

  denoise: the generator's and fake score's Denoiser (params['generator'],
  params['fake_score']); teacher: f_phi's Denoiser (params `teacher_params`); keys: one
  PRNG key per example (data_free.example_keys) for eps, t, eps', s and n, each of the
  example `shape`; rng: dropout, which acts in G inside L_theta and in f_psi's own loss
  (f_psi inside L_theta, f_phi and the draw f_psi learns from run in inference mode, as in
  the code).
  """
  eps_keys, t_keys, noise_keys, s_keys, n_keys = jax.vmap(
      lambda k: jax.random.split(k, 5), out_axes=1)(keys)
  normal = lambda k: jax.random.normal(k, shape)
  g_rng, drop_rng = jax.random.split(rng)
  eps = per_example(eps_keys, normal)
  x_g = generate(denoise, params["generator"], eps, cond, process, settings.init_sigma, rng=g_rng)

  t = per_example(t_keys, lambda k: generator_time(k, process, settings.tmax))
  x_t = process.noise(x_g, t, per_example(noise_keys, normal))
  x_real = teacher(teacher_params, x_t, t, cond).x
  x_fake = denoise(jax.lax.stop_gradient(params["fake_score"]), x_t, t, cond).x
  generator_loss = sid_generator_loss(x_g, x_real, x_fake, settings.alpha)

  # The fake score's inputs: the generator's draw from the same eps in inference mode (the
  # code draws them with G in eval mode); identical to x_g without dropout.
  x_0 = jax.lax.stop_gradient(generate(denoise, params["generator"], eps, cond, process,
                                       settings.init_sigma))
  fake_score_time = FAKE_SCORE_TIMES.lookup(settings.fake_score_time)
  s = per_example(s_keys, lambda k: fake_score_time(k, process, settings))
  fake_score_loss = denoising_loss(denoise, params["fake_score"], x_0, s,
                                   per_example(n_keys, normal), process,
                                   settings.fake_score_weighting, cond, drop_rng)
  return generator_loss, fake_score_loss


@register("sid")
class ScoreIdentityDistillation(Method):
  """One stage of `sid.num_updates` joint updates; frozen = the teacher's parameters."""
  needs_teacher = True
  needs_data = False

  usage = "--config=configs/sid.py:<preset>"

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("sid",), self.usage)
    self.settings = SiDSettings.from_config(config.sid)
    self.conditioning = DataFreeConditioning.from_config(config.model, config.sid)
    self.network, self.process, self.denoise = build_denoiser(config)
    self.teacher_network, _, teacher_denoise = build_denoiser(config, guidance=False)
    self.teacher = self.conditioning.teacher(teacher_denoise)
    self.shape = tuple(config.data.shape)

  def init(self, rng, teacher_params):
    """Generator and fake score: copies of the teacher (in a w-conditioned student, with the
    zero-initialised w-embedding)."""
    check_teacher(self.teacher_network, self.shape, teacher_params)
    student = embed_params(teacher_params, init_params(self.network, rng, self.shape))
    return {name: jax.tree.map(jnp.copy, student) for name in ("generator", "fake_score")}

  def stages(self):
    return [Stage(self.config.sid.num_updates, {"num_steps": 1}, "sid")]

  def lr_scales(self, params):
    """sid.generator_lr_scale and sid.fake_score_lr_scale times optim.lr."""
    scales = {"generator": self.config.sid.generator_lr_scale,
              "fake_score": self.config.sid.fake_score_lr_scale}
    return {name: jax.tree.map(lambda _: scale, params[name]) for name, scale in scales.items()}

  def teacher_evaluations_per_example(self, stage):
    """One f_phi call per example (two network evaluations when guided)."""
    return self.conditioning.teacher_evaluations

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    """mean L_theta + mean L_psi; per-example draws keyed by the batch's example counter."""
    cond_rng, drop_rng, example_rng = jax.random.split(rng, 3)
    cond = self.conditioning.draw(cond_rng, batch["index"].shape[0])
    generator_loss, fake_score_loss = sid_losses(
        self.denoise, self.teacher, params, frozen, cond,
        example_keys(example_rng, batch["index"]), drop_rng, self.process, self.settings,
        self.shape)
    metrics = {"generator_loss": jnp.mean(generator_loss),
               "fake_score_loss": jnp.mean(fake_score_loss)}
    return metrics["generator_loss"] + metrics["fake_score_loss"], metrics

  def sample(self, params, rng, num_samples, stage):
    """G(eps), eps the z_1 every method's samples start from (training.samples.initial_noise), clipped
    to [-1, 1] with `sample.clip_x` like every sampler's x_hat; one step whatever
    stage['num_steps']; labels and w from `sample_cond` at sample.guidance_weight."""
    del stage
    w = self.config.sample.guidance_weight
    self.conditioning.check_sample_weight(w)
    eps, _ = initial_noise(self.config, rng, num_samples)
    x = generate(self.denoise, params["generator"], eps, sample_cond(self.config, num_samples, w),
                 self.process, self.settings.init_sigma)
    return jnp.clip(x, -1.0, 1.0) if self.config.sample.get("clip_x", False) else x
