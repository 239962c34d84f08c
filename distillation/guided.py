"""Guided distillation (Meng et al.; DESIGN.md 5.3).

Stage 1 ('guided_w'): a w-conditioned student x_hat_eta(z_t, w, c) regresses the guided
teacher x_hat_w = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null), w ~ U[w_min, w_max] and
t ~ U(0, 1) per example, loss w(lambda_t) ||x_hat_w - x_hat_eta||^2.
Stage 2: progressive distillation (distillation.progressive) of the stage-1 model, with w
sampled per example and passed to teacher and student through the cond.

The student network is the teacher's with `model.guidance=True` (config.model describes
the student; the teacher is the same network without the w-embedding). Its w-embedding
ends in a zero-initialised layer, so the teacher's parameters copied into the student tree
give exactly the conditional teacher, for every w.

Design: 'guided' runs both stages in one run, as ONE method with a traced stage argument
`phase` (0 = stage 1, 1 = stage 2) choosing between the two losses (`common.branch`:
lax.cond on accelerators, a select on CPU), so one compiled step serves every stage. For
that, `frozen` has the same tree in every stage, the student's: in stage 1 it is the
teacher embedded in the student tree with an all-zero w-embedding (the w input is ignored
and the guided transform gives x_hat_w); at the boundary the stage-1 student becomes the
w-conditioned teacher of stage 2.
The trainer checkpoints params, frozen and stage_index, so a run resumes in either stage.
'guided_w' alone followed by 'progressive' with `--config.teacher.workdir` pointing at the
stage-1 run gives the same two stages in two runs.
"""
import jax
import jax.numpy as jnp
from flax import traverse_util

from diffusion.losses import weighted_x_mse
from diffusion.networks import build_denoiser, build_network, init_params
from distillation.common import (branch, check_teacher, ddim_fidelity, require_sections,
                                 require_uniform_grid, training_cond)
from distillation.progressive import halving_stages, progressive_loss
from sampling import guided
from training.method import Method, Stage, register


def embed_params(teacher_params, student_params):
  """The student tree with every teacher leaf copied in; the other leaves (the new
  w-embedding) keep their student values."""
  flat = traverse_util.flatten_dict(student_params)
  flat.update(traverse_util.flatten_dict(teacher_params))
  return traverse_util.unflatten_dict(flat)


def guided_w_loss(denoise, params, teacher_params, x, cond, rng, process, weighting: str,
                  num_classes: int):
  """Per-example w(lambda_t) ||x_hat_w(z_t, c) - x_hat_eta(z_t, w, c)||^2, t ~ U(0, 1).

  x_hat_w = (1 + w) x_hat(z_t, c) - w x_hat(z_t, null) of the teacher (no gradient), w = cond['w'].
  """
  t_rng, eps_rng, drop_rng = jax.random.split(rng, 3)
  t = jax.random.uniform(t_rng, x.shape[:1])
  z = process.noise(x, t, jax.random.normal(eps_rng, x.shape))
  target = guided(denoise, cond["w"], num_classes)(teacher_params, z, t, cond)
  pred = denoise(params, z, t, cond, rng=drop_rng)
  return weighted_x_mse(jax.lax.stop_gradient(target.x), pred.x, process.logsnr(t), weighting)


@register("guided_w")
class GuidedStage1(Method):
  """Stage 1 only: the w-conditioned student of a class-conditional teacher (trained at
  t ~ U(0, 1), so it samples on any `sample.time_grid`)."""
  needs_teacher = True

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("distill", "guided"), "--config=configs/guided.py:<preset>")
    if not (config.model.num_classes and config.model.guidance):
      raise ValueError(f"Method {config.method!r} trains a w-conditioned student of a "
                       "class-conditional teacher: set model.num_classes > 0 and "
                       "model.guidance=True.")
    self.network, self.process, self.denoise = build_denoiser(config)
    self.teacher_network = build_network(dict(config.model, guidance=False))
    self.teacher_config = config.copy_and_resolve_references()
    self.teacher_config.model.guidance = False

  def init(self, rng, teacher_params):
    check_teacher(self.teacher_network, self.config.data.shape, teacher_params)
    return embed_params(teacher_params, init_params(self.network, rng, self.config.data.shape))

  def init_frozen(self, teacher_params):
    """The teacher in the student tree with a zero w-embedding (so w is ignored)."""
    shapes = jax.eval_shape(lambda: init_params(self.network, jax.random.PRNGKey(0),
                                                self.config.data.shape))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return embed_params(teacher_params, zeros)

  def stages(self):
    return [Stage(self.config.guided.w_steps, self._stage1_args(), "guided_w")]

  def _stage1_args(self):
    return {"num_steps": self.config.distill.teacher_steps}

  def teacher_evaluations_per_example(self, stage):
    """Stage 1: the guided teacher (conditional + unconditional, one batched call); stage 2:
    two steps of the w-conditioned stage-1 model."""
    return 2.0

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    losses = self._stage1_losses(params, frozen, batch, rng)
    return jnp.mean(losses), {"loss": jnp.mean(losses)}

  def _stage1_losses(self, params, frozen, batch, rng):
    cond_rng, loss_rng = jax.random.split(rng)
    cond = training_cond(self.config, batch, cond_rng)
    return guided_w_loss(self.denoise, params, frozen, batch["image"], cond, loss_rng,
                         self.process, self.config.distill.weighting, self.config.model.num_classes)

  def stage_metrics(self, params, frozen, rng, stage):
    """Student vs classifier-free-guided teacher, both N-step DDIM at sample.guidance_weight."""
    return self._stage1_metrics(params, frozen, rng, stage["num_steps"])

  def _stage1_metrics(self, params, frozen, rng, num_steps):
    return ddim_fidelity(self.config, self.denoise, self.process, rng,
                         self.config.distill.fidelity_samples, (params, num_steps),
                         (frozen, num_steps), teacher_config=self.teacher_config)


@register("guided")
class GuidedDistillation(GuidedStage1):
  """Stage 1 ('guided_w', phase 0) then progressive halving of the stage-1 model (phase 1)."""

  def __init__(self, config):
    super().__init__(config)
    require_uniform_grid(config)   # stage 1 trains at t ~ U(0, 1), stage 2 at t = i/N

  def stages(self):
    stage1 = Stage(self.config.guided.w_steps, dict(self._stage1_args(), phase=0), "guided_w")
    return [stage1] + halving_stages(self.config.distill, phase=1)

  def next_frozen(self, frozen, params):
    return params

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    def stage2():
      cond_rng, loss_rng = jax.random.split(rng)
      cond = training_cond(self.config, batch, cond_rng)
      return progressive_loss(self.denoise, params, frozen, batch["image"], cond, loss_rng,
                              stage["num_steps"], self.process, self.config.distill.weighting)

    losses = branch(stage["phase"] == 0,
                    lambda: self._stage1_losses(params, frozen, batch, rng), stage2)
    return jnp.mean(losses), {"loss": jnp.mean(losses)}

  def stage_metrics(self, params, frozen, rng, stage):
    """Phase 0 as 'guided_w'; phase 1: student N-step vs stage-1 teacher 2N-step DDIM."""
    n, num_steps = self.config.distill.fidelity_samples, stage["num_steps"]
    stage2 = lambda: ddim_fidelity(self.config, self.denoise, self.process, rng, n,
                                   (params, num_steps), (frozen, 2 * num_steps))
    return branch(stage["phase"] == 0,
                  lambda: self._stage1_metrics(params, frozen, rng, num_steps), stage2)
