"""Progressive distillation (Salimans & Ho; DESIGN.md 5.2): N-step students of 2N-step teachers.

For t = i/N (i ~ U{1..N}), s = t - 1/N and z_t = alpha_t x + sigma_t eps, the teacher takes
two DDIM steps z_t -> z_{t - 0.5/N} -> z_s (no gradient); the student's x-target is the x
whose ONE DDIM step t -> s lands on z_s (diffusion.targets.ddim_target):

  x_tilde = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),

which at s = 0, where (alpha, sigma) = (1, 0) exactly, is the teacher's last x_hat.
loss = w(lambda_t) ||x_tilde - x_hat_student(z_t, t)||^2 (default truncated SNR).

The student starts as a copy of the teacher and becomes the next stage's teacher while N
halves. N reaches the loss as a traced stage argument, so one compiled step serves every
stage. The pieces (`two_teacher_steps`, `halving_target`, `progressive_loss`,
`halving_stages`) are shared with guided distillation (stage 2 is this loss with a cond
that carries w) and the distilled DDIM encoder; the generic ones (training conds,
teacher-student fidelity, `branch`) live in distillation.common.
The losses train on the uniform grid t = i/N, so sampling must use it too
(`sample.time_grid='uniform'`, checked at construction).
"""
import jax
import jax.numpy as jnp

from diffusion.losses import weighted_x_mse
from diffusion.networks import build_denoiser
from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to
from diffusion.targets import ddim_target
from distillation.common import (check_teacher, ddim_fidelity, require_sections,
                                 require_uniform_grid, training_cond)
from sampling.steps import ddim_step, scales
from training.method import Method, Stage, register


def two_teacher_steps(denoise, params, z, t, s, cond, process):
  """z_s from two teacher DDIM steps z_t -> z_m -> z_s, m = (t + s) / 2 (either direction)."""
  m = 0.5 * (t + s)

  def step(z, a, b):
    return ddim_step(denoise(params, z, a, cond), *scales(process, broadcast_to(b, z)))

  return step(step(z, t, m), m, s)


def halving_target(denoise, params, z, t, s, cond, process) -> Prediction:
  """The (x, eps) whose one DDIM step t -> s lands where the teacher's two steps do; no gradient.

  The t-side scales are the process's own (those the network's parameterization uses),
  the s-side ones are the step's `scales` (exactly (1, 0) at s = 0).
  """
  z_s = two_teacher_steps(denoise, params, z, t, s, cond, process)
  alpha_t, sigma_t = process.alpha_sigma(broadcast_to(t, z))
  target = ddim_target(z, z_s, alpha_t, sigma_t, *scales(process, broadcast_to(s, z)))
  return jax.lax.stop_gradient(target)


def progressive_loss(denoise, params, teacher_params, x, cond, rng, num_steps, process,
                     weighting: str, teacher_denoise=None):
  """Per-example w(lambda_t) ||x_tilde - x_hat(z_t, t)||^2 at t = i/N, i ~ U{1..N}, shape (B,).

  `teacher_denoise` defaults to `denoise` (teacher and student share the network).
  """
  i_rng, eps_rng, drop_rng = jax.random.split(rng, 3)
  n = jnp.asarray(num_steps, jnp.int32)
  i = jax.random.randint(i_rng, x.shape[:1], 1, n + 1)
  t, s = i / n, (i - 1) / n
  z = process.noise(x, t, jax.random.normal(eps_rng, x.shape))
  target = halving_target(teacher_denoise or denoise, teacher_params, z, t, s, cond, process)
  pred = denoise(params, z, t, cond, rng=drop_rng)
  return weighted_x_mse(target.x, pred.x, process.logsnr(t), weighting)


def halving_steps(teacher_steps: int, min_steps: int) -> list[int]:
  """[teacher_steps / 2, teacher_steps / 4, ..., min_steps]."""
  steps, n = [], teacher_steps
  while n > min_steps:
    n //= 2
    steps.append(n)
  if not steps or n != min_steps or min_steps * 2 ** len(steps) != teacher_steps:
    raise ValueError(f"distill.teacher_steps={teacher_steps} must be distill.min_steps="
                     f"{min_steps} times a power of two (at least 2).")
  return steps


def halving_stages(distill_config, **args) -> list[Stage]:
  """One stage of `steps_per_stage` updates per halving, args {'num_steps': N, **args}."""
  return [Stage(distill_config.steps_per_stage, dict(args, num_steps=n), f"{n}steps")
          for n in halving_steps(distill_config.teacher_steps, distill_config.min_steps)]


@register("progressive")
class ProgressiveDistillation(Method):
  """Halves the teacher's step count stage by stage; frozen = the current teacher's params."""
  needs_teacher = True

  usage = "--config=configs/progressive.py:<preset>"

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("distill",), self.usage)
    if config.model.guidance:   # stage 2 of guided distillation: w ~ U[guided.w_min, w_max]
      require_sections(config, ("guided",), "--config=configs/guided.py:<preset> "
                       f"--config.method={config.method}")
    require_uniform_grid(config)
    self.network, self.process, self.denoise = build_denoiser(config)

  def init(self, rng, teacher_params):
    check_teacher(self.network, self.config.data.shape, teacher_params)
    return jax.tree.map(jnp.copy, teacher_params)

  def stages(self):
    return halving_stages(self.config.distill)

  def next_frozen(self, frozen, params):
    return params

  def teacher_evaluations_per_example(self, stage):
    """Two teacher DDIM steps per example."""
    return 2.0

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    cond_rng, loss_rng = jax.random.split(rng)
    cond = training_cond(self.config, batch, cond_rng)
    losses = progressive_loss(self.denoise, params, frozen, batch["image"], cond, loss_rng,
                              stage["num_steps"], self.process, self.config.distill.weighting)
    return jnp.mean(losses), {"loss": jnp.mean(losses)}

  def stage_metrics(self, params, frozen, rng, stage):
    """Student N-step vs teacher 2N-step DDIM samples from the same noise."""
    n = stage["num_steps"]
    return ddim_fidelity(self.config, self.denoise, self.process, rng,
                         self.config.distill.fidelity_samples, (params, n), (frozen, 2 * n))
