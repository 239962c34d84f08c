"""Catch-Up Distillation's one-step stage (Shao et al. 2023; DESIGN.md 5.6; reference
train_distill_update.py, its trajectories from generate.py --save_sub_traj --save_z).

Trajectories (offline, `--mode=pairs`, the shared writer training/offline.py): from
z ~ N(0, I), N = onestep.trajectory_steps (16) Euler steps of the CUD run's EMA model (the
teacher, head `cud.sample_head`), keeping z and every x_hat_0 = z_{t_i} - t_i u(z_{t_i}, t_i),
t_i = i/N for i = N, ..., 1 (trajectory point m = N - i, so m = 0 is at t = 1 and the last
point's x_hat_0 is the N-step Euler sample), clipped to [-1, 1] as the reference's 8-bit
PNGs are (stored as float32 here, not quantised).

Student: initialised from the EMA model, x_S(z) = z - u_S(z, 1) with u_S the network's MAIN
output (head 1; the reference's `flow_model(z, t)`), one stage per curriculum point m
(onestep.curriculum = 8, 11, 14 of 16); the paper's one-step objective as the reference's
`distill`:

  L = MSE(x_S(z), x_hat_0[m]) + lambda MSE(u_S(z, 1), SG[u_A(z, 1)]),   lambda = 0.1,

u_A from the anchor A, a slow EMA of the student (theta_A <- 0.9999 theta_A + 0.0001 theta,
onestep.anchor_decay: the trainer's target EMA, the loss's `ema`), evaluated without dropout
(the reference's EMA model is in eval mode); element means. Adam and both EMAs run on across
the curriculum points (`restart_at_stage = False`), as the reference keeps its optimizer and
EMA model across them. Unconditional models only (as the reference).
"""
import jax
import jax.numpy as jnp

from distillation.catch_up import CatchUpDistillation
from distillation.common import check_teacher, require_sections
from distillation.flow_matching import mse
from sampling.grids import get_grid
from sampling.steps import ddim_step, scales
from training.method import Stage, register
from training.offline import OfflineData
from training.samples import initial_noise

USAGE = "--config=configs/catch_up.py:<preset>_onestep"


def euler_x0_trajectory(denoise, params, z, process, num_steps: int):
  """x_hat_0 at t_i = i/N for i = N..1 along N Euler steps from z at t = 1: (N, B, ...).

  Each step is a DDIM step t_i -> t_{i-1}, which on the linear flow is exactly the Euler
  step z - (t_i - t_{i-1}) u; x_hat_0 = z_{t_i} - t_i u is the step's prediction.x."""
  grid = get_grid("uniform")

  def step(z, i):
    pred = denoise(params, z, grid(i, num_steps))
    return ddim_step(pred, *scales(process, grid(i - 1, num_steps))), pred.x

  _, x_hats = jax.lax.scan(step, z, jnp.arange(num_steps, 0, -1))
  return x_hats


@register("catch_up_onestep")
class CatchUpOneStep(CatchUpDistillation):
  """The one-step student of a catch-up run (teacher.workdir) on its offline trajectories;
  one stage per curriculum point, frozen = {}."""
  needs_teacher = True
  restart_at_stage = False

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("onestep",), USAGE)
    if config.model.num_classes:
      raise ValueError("catch_up_onestep distils unconditional catch-up runs only (as the "
                       "reference); set model.num_classes=0.")
    if not all(0 <= m < config.onestep.trajectory_steps for m in config.onestep.curriculum):
      raise ValueError(f"onestep.curriculum={tuple(config.onestep.curriculum)}: points are "
                       f"0..onestep.trajectory_steps - 1 = {config.onestep.trajectory_steps - 1}.")

  def init(self, rng, teacher_params):
    check_teacher(self.network, self.config.data.shape, teacher_params)
    return jax.tree.map(jnp.copy, teacher_params)

  def init_frozen(self, teacher_params):
    return {}   # the teacher's work is in the trajectories

  def target_ema_decay(self):
    """The anchor's rate, onestep.anchor_decay (the reference's 0.9999)."""
    return self.config.onestep.anchor_decay

  def stages(self):
    o = self.config.onestep
    return [Stage(o.steps_per_point, {"num_steps": 1, "point": m}, f"point{m}")
            for m in o.curriculum]

  def generate_trajectories(self, teacher_params, rng, n: int) -> dict:
    """n rows {'noise': z ~ N(0, I), 'trajectory': clip(x_hat_0 at every point, -1, 1) of
    shape (N,) + data shape, 'label': 0}."""
    z = jax.random.normal(rng, (n,) + tuple(self.config.data.shape))
    x_hats = euler_x0_trajectory(self.denoise, teacher_params, z, self.process,
                                 self.config.onestep.trajectory_steps)
    return {"noise": z, "trajectory": jnp.clip(jnp.moveaxis(x_hats, 0, 1), -1.0, 1.0),
            "label": jnp.zeros((n,), jnp.int32)}

  def offline_data(self):
    o = self.config.onestep
    return OfflineData(
        generate=self.generate_trajectories, num_train=o.num_trajectories,
        num_heldout=o.num_heldout, shard_size=o.shard_size,
        batch_size=o.generation_batch_size, evaluations_per_example=o.trajectory_steps,
        seed=o.trajectory_seed,
        identity={"method": "catch_up_onestep", "teacher": self.config.teacher.workdir,
                  "trajectory_steps": o.trajectory_steps, "head": self.sample_head(),
                  "shape": list(self.config.data.shape), "model": self.config.model.to_dict(),
                  "cud_order": self.config.cud.order})

  def velocity(self, params, z, rng=None):
    """u(z, 1) of the main output (head 1), dropout on with `rng`."""
    return self.velocities(params, z, jnp.ones(z.shape[:1]), None, rng)[0]

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    z = batch["noise"]
    u = self.velocity(params, z, rng)
    target = jnp.take(batch["trajectory"], stage["point"], axis=1)
    regression = mse(z - u, target)
    ema_term = mse(u, jax.lax.stop_gradient(self.velocity(ema, z)))
    loss = regression + self.config.onestep.ema_weight * ema_term
    return loss, {"loss": loss, "regression_loss": regression, "ema_loss": ema_term}

  def heldout_loss(self, params, frozen, batch, rng, stage):
    """MSE to the LAST curriculum point's x_hat_0 (comparable across stages), no dropout."""
    target = jnp.take(batch["trajectory"], self.config.onestep.curriculum[-1], axis=1)
    return mse(batch["noise"] - self.velocity(params, batch["noise"]), target)

  def sample(self, params, rng, num_samples, stage):
    """x = z_1 - u_S(z_1, 1) from z_1 = normal(split(rng)[0]) (training.samples.initial_noise),
    clipped to [-1, 1] with sample.clip_x."""
    z, _ = initial_noise(self.config, rng, num_samples)
    x = z - self.velocity(params, z)
    return jnp.clip(x, -1.0, 1.0) if self.config.sample.get("clip_x", False) else x
