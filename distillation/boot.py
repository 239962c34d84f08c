"""BOOT: data-free distillation by bootstrapping (Gu et al. 2023, arXiv 2306.05544; DESIGN.md
5.5; no official code exists).

The student g(eps, t, c) sees only noise eps (in the network's z slot) and predicts the signal
y_t = (z_t - sigma_t eps) / alpha_t of the teacher's DDIM trajectory from z_1 = eps; y_0 is the
sample, so it samples in ONE step, x = g(eps, 0). No image is ever read (`needs_data = False`).
Its raw output o is read through the TEACHER's parameterization at t = 1 with eps in the z slot
(diffusion.parameterization.signal_reading; v: g = alpha_1 eps - sigma_1 o), at training and at
sampling alike, so the student copied from the teacher starts with g(eps, 1) = f_T(eps, 1) and
L_BC = 0; an eps teacher is refused with the reason.

Bootstrapping loss (the paper's Eq. 7, L_BS, with the boundary term L_BC, Sec. 3.2), per
example: t on the grid t_i = i/N, i ~ U{1..N}, s = t - Delta, Delta = 1/N,

  delta     = 1 - (alpha_t sigma_s) / (sigma_t alpha_s)        (exactly 1 at s = 0)
  z_hat_t   = alpha_t SG(g(eps, t)) + sigma_t eps               (= ddim_step of the signal)
  y_s       = SG[g(eps, t) + delta (f_T(z_hat_t, t) - g(eps, t))]   (one DDIM step t -> s)
  L_BS      = w ||g(eps, s) - y_s||^2
  L_BC      = ||g(eps, 1) - f_T(eps, 1)||^2
  loss      = L_BS + lambda_BC L_BC,

f_T the teacher's x-prediction, for a class-conditional teacher the guided one
(distillation.data_free: labels and per-example w drawn inside the loss). Per step: one
student call without gradient (g(eps, t)), one with gradient on [eps; eps] at [s; 1], one
teacher call on [z_hat_t; eps] at [t; 1] (its two guidance branches batched too).

Schedule: `boot.schedule` lists N per stage (a curriculum, e.g. '8,16,32'), each
`boot.steps_per_stage` updates; N reaches the loss as a traced stage argument, so one
compiled step serves every stage. The student starts as a copy of the teacher (the
w-embedding of a w-conditioned student zero-initialised).
"""
import jax
import jax.numpy as jnp

from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.losses import mean_per_example
from diffusion.networks import build_network, build_process, init_params
from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to
from diffusion.registry import Registry
from diffusion.targets import signal_step_size, signal_target
from distillation.common import check_teacher, fidelity_metrics, grid_sizes, require_sections
from distillation.data_free import DataFreeConditioning, example_keys, per_example
from distillation.guided import embed_params
from sampling.steps import ddim_step, scales
from training.method import Method, Stage, register
from training.samples import ddim_samples, initial_noise, sample_cond

# Training times of one example, fn(key, N) -> (t, s = t - 1/N), for N grid intervals.
TIME_SAMPLERS = Registry("BOOT time sampling")


@TIME_SAMPLERS.register("grid")
def grid_times(key, num_steps):
  """t = i/N, i ~ U{1..N}; s = (i - 1)/N (exactly 0 for i = 1)."""
  n = jnp.asarray(num_steps, jnp.int32)
  i = jax.random.randint(key, (), 1, n + 1)
  return i / n, (i - 1) / n


@TIME_SAMPLERS.register("continuous")
def continuous_times(key, num_steps):
  """t ~ U[0, 1], s = max(t - Delta, 0), Delta = 1/N: s = 0 exactly with probability Delta (the
  grid's share), so the sampled output g(eps, 0) is trained, never extrapolated to."""
  step = 1.0 / jnp.asarray(num_steps, jnp.float32)
  t = jax.random.uniform(key, (), jnp.float32)
  return t, jnp.maximum(t - step, 0.0)


# Weight of the per-example bootstrapping MSE as a function of delta.
DELTA_WEIGHTINGS = Registry("BOOT delta weighting")
DELTA_WEIGHTINGS.update({
    "constant": jnp.ones_like,
    "inverse_delta_sq": lambda delta: 1.0 / jnp.square(delta),
})


def _doubled(tree):
  return jax.tree.map(lambda a: jnp.concatenate([a, a]), tree)


def bootstrap_loss(student, params, teacher, teacher_params, eps, cond, t, s, process,
                   weighting: str = "constant", lambda_bc: float = 1.0):
  """Per-example (L_BS + lambda_BC L_BC, L_BS, L_BC), each (B,): BOOT's bootstrapping
  objective (Gu et al. 2023, Eq. 7) and boundary loss (Sec. 3.2; DESIGN.md 5.5),

    L_BS = w ||g(eps, s) - SG[y_t + delta (f_T(alpha_t y_t + sigma_t eps, t) - y_t)]||^2,
    y_t = SG(g(eps, t)),   L_BC = ||g(eps, 1) - f_T(eps, 1)||^2.

  Weighting w: the paper's Eq. 7 divides by the square of its step delta; read as its fixed,
  hand-chosen TIME step t - s (a finite difference of the Signal-ODE dy/dt = -lambda'_t (f_T -
  y)), that is the same for every example: 'constant' (w = 1, the default; the scale 1/Delta^2
  is dropped, so lambda_BC is relative to the unscaled L_BS). Each grid interval then weighs
  1/N, the s = 0 one (the sampled output's) included. 'inverse_delta_sq' (w = 1/delta^2 of the
  signal-space step, as one public re-implementation reads it: OFTSR's 'boot' loss) is kept as
  an option: on the cosine schedule it gives the s = 0 term ~1e-5 of the total weight, and on
  the Gaussian v-network test it left g(eps, 0) 0.027 RMS from the 16-step DDIM sample
  against 0.0082 with 'constant'.
  Time sampling: the paper's t ~ U[Delta, 1], s = t - Delta, reaches s = 0 with probability
  0; here 'grid' (t_i = i/N, the default) and 'continuous' (s clipped at 0) both train s = 0
  in a 1/N share. L_BC runs on every example: on the Gaussian v-network of
  tests/test_boot_analytic.py (1500 updates), keeping it to the i = N examples only left g(eps, 0)
  0.0091 / 0.0228 RMS from the N-step DDIM sample against 0.0082 / 0.0160 (N = 16 / 32).

  student(params, eps, t, cond) -> Prediction whose x is the signal g(eps, t, c);
  teacher(teacher_params, z, t, cond) -> Prediction of the (guided) teacher, f_T = its x.
  Gradient flows through g(eps, s) and g(eps, 1) only.
  """
  alpha_t, sigma_t = process.alpha_sigma(t)
  delta = signal_step_size(alpha_t, sigma_t, *scales(process, s))
  y_t = jax.lax.stop_gradient(student(params, eps, t, cond).x)
  z_hat_t = ddim_step(Prediction(x=y_t, eps=eps), broadcast_to(alpha_t, eps),
                      broadcast_to(sigma_t, eps))
  ones = jnp.ones_like(t)
  f_t, f_1 = jnp.split(teacher(teacher_params, jnp.concatenate([z_hat_t, eps]),
                               jnp.concatenate([t, ones]), _doubled(cond)).x, 2)
  target = jax.lax.stop_gradient(signal_target(y_t, f_t, broadcast_to(delta, eps)))
  g_s, g_1 = jnp.split(student(params, jnp.concatenate([eps, eps]), jnp.concatenate([s, ones]),
                               _doubled(cond)).x, 2)
  l_bs = DELTA_WEIGHTINGS.lookup(weighting)(delta) * mean_per_example(jnp.square(g_s - target))
  l_bc = mean_per_example(jnp.square(g_1 - f_1))
  return l_bs + lambda_bc * l_bc, l_bs, l_bc


@register("boot")
class Boot(Method):
  """One-step student of a (guided) teacher, trained without data; frozen = the teacher."""
  needs_teacher = True
  needs_data = False

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("boot",), "--config=configs/boot.py:<preset>")
    bc = config.boot
    self.schedule = grid_sizes(bc.schedule, "boot.schedule")
    TIME_SAMPLERS.lookup(bc.time_sampling)
    DELTA_WEIGHTINGS.lookup(bc.weighting)
    self.conditioning = DataFreeConditioning.from_config(config.model, bc)
    self.process = build_process(config.diffusion)
    self.network = build_network(config.model)
    self.teacher_network = build_network(dict(config.model, guidance=False))
    self.denoise = make_denoiser(model_apply_fn(self.network), self.process,
                                 config.diffusion.parameterization, signal=True)
    self.teacher_denoise = make_denoiser(model_apply_fn(self.teacher_network), self.process,
                                         config.diffusion.parameterization)
    # The teacher's sampling config: its own network, guided as the student was taught.
    self.teacher_config = config.copy_and_resolve_references()
    self.teacher_config.model.guidance = False
    if self.conditioning.w_range is None:
      self.teacher_config.sample.guidance_weight = self.conditioning.guidance_weight

  def init(self, rng, teacher_params):
    """The teacher's parameters (plus a zero-initialised w-embedding if w-conditioned)."""
    check_teacher(self.teacher_network, self.config.data.shape, teacher_params)
    if self.conditioning.w_range is None:
      return jax.tree.map(jnp.copy, teacher_params)
    return embed_params(teacher_params, init_params(self.network, rng, self.config.data.shape))

  def stages(self):
    steps = self.config.boot.steps_per_stage
    return [Stage(steps, {"num_steps": 1, "grid": n}, f"N{n}") for n in self.schedule]

  def teacher_evaluations_per_example(self, stage):
    """f_T at z_hat_t and at eps (the boundary), one batched call (doubled when guided)."""
    return 2 * self.conditioning.teacher_evaluations

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    del ema
    bc = self.config.boot
    cond_rng, example_rng = jax.random.split(rng)
    cond = self.conditioning.draw(cond_rng, batch["index"].shape[0])
    # t, s and eps from one key per example, so they are split over the devices like index.
    time_keys, eps_keys = jnp.moveaxis(per_example(
        example_keys(example_rng, batch["index"]), jax.random.split), 1, 0)
    times = TIME_SAMPLERS.lookup(bc.time_sampling)
    t, s = per_example(time_keys, lambda key: times(key, stage["grid"]))
    shape = tuple(self.config.data.shape)
    eps = per_example(eps_keys, lambda key: jax.random.normal(key, shape))
    total, l_bs, l_bc = bootstrap_loss(
        self.denoise, params, self.conditioning.teacher(self.teacher_denoise), frozen, eps, cond,
        t, s, self.process, bc.weighting, bc.lambda_bc)
    return jnp.mean(total), {"loss_bs": jnp.mean(l_bs), "loss_bc": jnp.mean(l_bc)}

  def sample(self, params, rng, num_samples, stage):
    """x = g(eps, 0, c): one network call from the noise every method's samples start from
    (training.samples.initial_noise), clipped to [-1, 1] with `sample.clip_x` like every sampler's
    x_hat. The student has this one sampler, whatever stage['num_steps']."""
    del stage
    w = self.config.sample.guidance_weight
    self.conditioning.check_sample_weight(w)
    eps, _ = initial_noise(self.config, rng, num_samples)
    x = self.denoise(params, eps, jnp.zeros((num_samples,)),
                     sample_cond(self.config, num_samples, w)).x
    return jnp.clip(x, -1.0, 1.0) if self.config.sample.get("clip_x", False) else x

  def stage_metrics(self, params, frozen, rng, stage):
    """Student (1 step) vs the teacher's N-step DDIM sample from the same noise and labels,
    the recursion's fixed point (N = the stage's grid, guided at the student's w)."""
    n = self.config.boot.fidelity_samples
    teacher = ddim_samples(self.teacher_config, self.teacher_denoise, self.process, frozen, rng,
                           n, stage["grid"])
    return fidelity_metrics(self.sample(params, rng, n, stage), teacher)
