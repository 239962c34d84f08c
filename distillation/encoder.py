"""The distilled DDIM encoder (data -> noise, DESIGN.md 5.3), for style transfer.

Progressive halving run forwards in time: for t = i/N (i ~ U{0..N-1}) and s = t + 1/N,
the teacher encodes z_t -> z_{t + 0.5/N} -> z_s with two DDIM steps, and the student's
ONE DDIM step from z_t must land on z_s. A DDIM step with s > t is the same linear map
as with s < t, so the same 2x2 solve (diffusion.targets.ddim_target) gives the target;
here the eps half of it is the one to learn:

  eps_tilde = (z_s - (alpha_s / alpha_t) z_t) / (sigma_s - (alpha_s / alpha_t) sigma_t)

(x_tilde with alpha and sigma, x and eps swapped). It is finite at the data end t = 0,
where x_hat = z_0 is fixed and only eps_hat moves the step, and at s = 1 it is the
teacher's last eps_hat. The loss mirrors progressive distillation under that swap:
w(-lambda_t) ||eps_tilde - eps_hat_student(z_t, t)||^2, which for the symmetric weightings
(truncated_snr, snr+1) equals the x-space loss w(lambda_t) ||x_tilde - x_hat||^2.

The first teacher (stage 0) is sampling's `ddim_encode` with 2N steps: its step from t = 0
uses the data itself, Prediction(x=z_0, eps=0). A distilled encoder must learn its first
step, so `encode` below calls the network at every step, t = 0 included; so do the later
teachers (the previous students). `encode` of `with_data_first_step(denoise, True)` is
`ddim_encode` (one discarded network call more), so every stage's teacher is `encode` of
`with_data_first_step`. (`encode` stays separate from `ddim_encode`: the sampler skips the
network at t = 0 and follows `sample.time_grid`; the encoder is trained on t = i/N.)
Stage args: {'num_steps': N, 'data_first_step': 1 in stage 0 else 0}.
`frozen` = {'teacher': current teacher, 'decoder': the original model}.
"""
import jax
import jax.numpy as jnp

from diffusion.losses import weighted_x_mse
from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to
from distillation.common import fidelity_metrics, training_cond
from distillation.progressive import ProgressiveDistillation, halving_steps, halving_target
from sampling.grids import uniform
from sampling.steps import ddim_step, scales
from training.method import Stage, register
from training.samples import ddim_samples, sample_cond, sample_images


def encode(denoise, params, x, cond=None, *, process, num_steps):
  """The N-step distilled DDIM encoder: z_{(j+1)/N} = alpha x_hat(z_{j/N}) + sigma eps_hat(z_{j/N}),
  j = 0..N-1, from z_0 = x (the network is called at t = 0 too). Returns z_1."""

  def body(j, z):
    pred = denoise(params, z, uniform(j, num_steps), cond)
    return ddim_step(pred, *scales(process, uniform(j + 1, num_steps)))

  return jax.lax.fori_loop(0, num_steps, body, x)


def with_data_first_step(denoise, use_data):
  """`denoise` whose prediction at t = 0 is Prediction(x=z, eps=0) where `use_data` (as
  sampling's `ddim_encode`)."""

  def denoise_first(params, z, t, cond=None) -> Prediction:
    pred = denoise(params, z, t, cond)
    first = broadcast_to(use_data & (jnp.asarray(t) == 0), z)
    return Prediction(x=jnp.where(first, z, pred.x), eps=jnp.where(first, 0.0, pred.eps))

  return denoise_first


def encoder_loss(denoise, params, teacher_params, x, cond, rng, num_steps, process,
                 weighting: str, teacher_denoise=None):
  """Per-example w(-lambda_t) ||eps_tilde - eps_hat(z_t, t)||^2 at t = i/N, i ~ U{0..N-1}."""
  i_rng, eps_rng, drop_rng = jax.random.split(rng, 3)
  n = jnp.asarray(num_steps, jnp.int32)
  i = jax.random.randint(i_rng, x.shape[:1], 0, n)
  t, s = i / n, (i + 1) / n
  z = process.noise(x, t, jax.random.normal(eps_rng, x.shape))
  target = halving_target(teacher_denoise or denoise, teacher_params, z, t, s, cond, process)
  pred = denoise(params, z, t, cond, rng=drop_rng)
  return weighted_x_mse(target.eps, pred.eps, -process.logsnr(t), weighting)


@register("progressive_encoder")
class EncoderDistillation(ProgressiveDistillation):
  """Halves the step count of the DDIM encoder stage by stage."""
  usage = "--config=configs/progressive.py:<preset> --config.method=progressive_encoder"

  def init_frozen(self, teacher_params):
    return {"teacher": teacher_params, "decoder": jax.tree.map(jnp.copy, teacher_params)}

  def stages(self):
    d = self.config.distill
    return [Stage(d.steps_per_stage, {"num_steps": n, "data_first_step": int(k == 0)},
                  f"encoder_{n}steps")
            for k, n in enumerate(halving_steps(d.teacher_steps, d.min_steps))]

  def next_frozen(self, frozen, params):
    return dict(frozen, teacher=params)

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    cond_rng, loss_rng = jax.random.split(rng)
    cond = training_cond(self.config, batch, cond_rng)
    teacher = with_data_first_step(self.denoise, stage["data_first_step"] == 1)
    losses = encoder_loss(self.denoise, params, frozen["teacher"], batch["image"], cond,
                          loss_rng, stage["num_steps"], self.process,
                          self.config.distill.weighting, teacher_denoise=teacher)
    return jnp.mean(losses), {"loss": jnp.mean(losses)}

  def sample(self, params, rng, num_samples, stage):
    """An encoder draws no images: this is the same network's many-step DDIM decoder
    (`distill.teacher_steps` steps), a check that it still denoises; encoder quality is
    `stage_metrics`' code fidelity."""
    return sample_images(self.config, self.denoise, self.process, params, rng, num_samples,
                         self.config.distill.teacher_steps)

  def stage_metrics(self, params, frozen, rng, stage):
    """Codes of the original model's DDIM samples: student N-step encoder vs teacher 2N-step,
    both conditioned on the labels (and w) the images were drawn with."""
    n, num_steps = self.config.distill.fidelity_samples, stage["num_steps"]
    images = ddim_samples(self.config, self.denoise, self.process, frozen["decoder"], rng, n,
                          self.config.distill.teacher_steps)
    cond = sample_cond(self.config, n, self.config.sample.guidance_weight)
    teacher = with_data_first_step(self.denoise, stage["data_first_step"] == 1)
    codes = lambda denoise, params, num_steps: encode(denoise, params, images, cond,
                                                      process=self.process, num_steps=num_steps)
    return fidelity_metrics(codes(self.denoise, params, num_steps),
                            codes(teacher, frozen["teacher"], 2 * num_steps))
