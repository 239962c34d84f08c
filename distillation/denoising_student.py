"""Denoising Student (Luhman & Luhman 2021; DESIGN.md 5.4; reference code tcl9876/Denoising_Student).

Pairs (offline, `--mode=pairs`, training/offline.py): eps ~ N(0, I) and the teacher's
deterministic DDIM sample from it, x_0 = clip(DDIM_N(eps), -1, 1), N = distill.teacher_steps
on distill.time_grid (a class-conditional teacher: labels drawn uniformly, guided at the fixed
distill.guidance_weight). The reference stores eps as float16 and x_0 quantised to uint8; here
both are float32, so x_0 is exactly the teacher's DDIM sample of the stored eps.

Student: the teacher's network evaluated once at t = 1 with z = eps, initialised from the
teacher, x_S(eps) = distillation.common.one_step_x (the residual map x = eps - o for eps
networks, as the reference's Onestep_Model; the parameterization's x otherwise). Loss (the
paper's eq. 11, the KL between unit-variance Gaussians around F_teacher and F_student, is
(1/2) ||x_0 - x_S(eps)||^2; the reference code, followed here, sums over pixels and averages
over the batch, and uses the L1 distance for CIFAR-10):

  L = mean_batch sum_pixels |x_0 - x_S(eps)|^p,  p = 1 ('l1') or 2 ('l2').

The EMA is scored on the held-out pairs every eval_every_steps; the checkpoint with the
lowest held-out loss is kept (the trainer; infra/checkpoint.py).
"""
import jax
import jax.numpy as jnp

from diffusion.networks import build_denoiser
from distillation.common import check_teacher, one_step_x, require_sections
from distillation.data_free import DataFreeConditioning
from sampling import get_sampler
from training.method import Method, Stage, register
from training.offline import OfflineData
from training.samples import initial_noise, sample_cond

DISTANCES = {"l1": jnp.abs, "l2": jnp.square}


def regression_loss(x_student, x_teacher, distance: str):
  """Per example sum over pixels of |x_0 - x_S|^p (p = 1: 'l1', 2: 'l2'), shape (B,)."""
  if distance not in DISTANCES:
    raise ValueError(f"distill.loss={distance!r}; choose one of {sorted(DISTANCES)}.")
  per_pixel = DISTANCES[distance](x_teacher - x_student)
  return jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=1)


@register("denoising_student")
class DenoisingStudent(Method):
  """One stage of num_train_steps updates on offline (eps, x_0) pairs; frozen is empty."""
  needs_teacher = True
  usage = "--config=configs/denoising_student.py:<preset>"

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("distill",), self.usage)
    self.network, self.process, self.denoise = build_denoiser(config)
    self.teacher_denoise = self.denoise   # the teacher's network is the student's
    self.conditioning = DataFreeConditioning.from_config(config.model, config.distill)

  def init(self, rng, teacher_params):
    check_teacher(self.network, self.config.data.shape, teacher_params)
    return jax.tree.map(jnp.copy, teacher_params)

  def init_frozen(self, teacher_params):
    return {}   # the teacher's work is in the pairs

  def stages(self):
    return [Stage(self.config.num_train_steps, {"num_steps": 1}, "1step")]

  def teacher_sample(self, teacher_params, noise, cond):
    """x_0 = clip(DDIM_N(noise), -1, 1): the teacher's deterministic sample of `noise`."""
    d = self.config.distill
    x0 = get_sampler("ddim")(self.conditioning.teacher(self.teacher_denoise), teacher_params, noise,
                             cond, process=self.process, num_steps=d.teacher_steps,
                             time_grid=d.time_grid)
    return jnp.clip(x0, -1.0, 1.0)

  def generate_pairs(self, teacher_params, rng, n: int) -> dict:
    """n rows {'noise': eps ~ N(0, I), 'image': teacher_sample(eps), 'label'} (label 0 for an
    unconditional teacher)."""
    noise_rng, label_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, (n,) + tuple(self.config.data.shape))
    cond = self.conditioning.draw(label_rng, n)
    label = cond["label"] if cond else jnp.zeros((n,), jnp.int32)
    return {"noise": noise, "image": self.teacher_sample(teacher_params, noise, cond),
            "label": label}

  def offline_data(self):
    d = self.config.distill
    return OfflineData(
        generate=self.generate_pairs, num_train=d.num_pairs, num_heldout=d.num_heldout,
        shard_size=d.shard_size, batch_size=d.generation_batch_size,
        evaluations_per_example=d.teacher_steps * self.conditioning.teacher_evaluations,
        seed=d.pairs_seed,
        identity={"method": "denoising_student", "teacher": self.config.teacher.workdir,
                  "teacher_steps": d.teacher_steps, "time_grid": d.time_grid,
                  "guidance_weight": d.guidance_weight, "shape": list(self.config.data.shape),
                  "model": self.config.model.to_dict(),
                  "diffusion": self.config.diffusion.to_dict()})

  def teacher_evaluations_per_example(self, stage):
    return 0.0   # the pairs' one-off cost is in <pairs>/cost.json

  def student(self, params, noise, cond, rng=None):
    """x_S(eps): one network evaluation at t = 1."""
    return one_step_x(self.denoise, self.config.diffusion.parameterization, params, noise,
                      cond, rng)

  def _cond(self, batch):
    return {"label": batch["label"]} if self.config.model.num_classes else None

  def student_loss(self, params, batch, rng=None):
    losses = regression_loss(self.student(params, batch["noise"], self._cond(batch), rng),
                             batch["image"], self.config.distill.loss)
    return jnp.mean(losses)

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    loss = self.student_loss(params, batch, rng)
    return loss, {"loss": loss}

  def heldout_loss(self, params, frozen, batch, rng, stage):
    return self.student_loss(params, batch)   # no dropout

  def sample(self, params, rng, num_samples, stage):
    """One step from z_1 = normal(split(rng)[0]) (training.samples.initial_noise), the
    labels of sample_cond; clipped to [-1, 1] like the pairs."""
    z, _ = initial_noise(self.config, rng, num_samples)
    x = self.student(params, z, sample_cond(self.config, num_samples, 0.0))
    return jnp.clip(x, -1.0, 1.0)
