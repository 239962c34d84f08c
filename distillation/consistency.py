"""Consistency distillation (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models";
DESIGN.md 5.8). Reference code: openai/consistency_models `cm/karras_diffusion.py`
(`consistency_losses`, `get_scalings_for_boundary_condition`) and the JAX
openai/consistency_models_cifar10 `jcm/losses.py` (`get_consistency_loss_fn`).

**Time.** The paper works in EDM's sigma, x_sigma = x + sigma eps on [eps, T] = [0.002, 80];
this project's z_t = alpha_t x + sigma_t eps is the same trajectory read as x_sigma = z_t /
alpha_t with sigma = sigma_t / alpha_t = exp(-lambda_t / 2) (so EDM's Euler step in sigma is a
DDIM step). The boundary is the process's own data end t_min = 0 (sigma_0 / alpha_0 =
exp(-lambda_max / 2), 4.5e-5 for lambda_max = 20) and T is t = 1, the range the teacher
was trained on.

**Boundary condition** (paper eq. (5) and Appendix C; reference
`get_scalings_for_boundary_condition`): f = c_skip(sigma) x_sigma + c_out(sigma) F with
c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = sd (sigma - sigma_min) /
sqrt(sigma^2 + sd^2), sd = sigma_data. f returns the trajectory's point at the boundary in
z-space, z_0 = alpha_0 x_eps, and after substituting x_sigma = z / alpha_t the scalings
have no division by alpha (finite at the flow's alpha_1 = 0):

  u = sigma_t alpha_0 - alpha_t sigma_0,   q = sd alpha_t alpha_0,   q_0 = sd alpha_0^2,
  f(z, t) = c_skip z + c_out F,   c_skip = q q_0 / (u^2 + q^2),
  c_out = sd u / sqrt(sigma_t^2 + sd^2 alpha_t^2).

At t = t_min, (c_skip, c_out) are taken as exactly (1, 0) (as `sampling.steps.scales`
takes the data end), so f(z, t_min) = z bit for bit for any parameters.

**F and the teacher.** The student network is the teacher's, read with the teacher's
parameterization as a Prediction (x_hat, eps_hat), and

  F = (sigma_t x_hat - sd^2 alpha_t eps_hat) / (sd sqrt(sigma_t^2 + sd^2 alpha_t^2)),

the output of EDM's preconditioned network for which EDM's denoiser c_skip^EDM x_sigma +
c_out^EDM F equals x_hat exactly. Consistency c_skip/c_out are EDM's shifted by sigma_min,
so a student initialised as a copy of the teacher starts at f = the teacher's x_hat up to
that shift, as the paper initialises CD from the EDM network. For a v-prediction teacher on
a VP process with sd = 1, F = -v_hat: the raw network output, negated.

**Loss** (paper eq. (7), L_CD^N; Algorithm 2): with i ~ U{1..N}, t = t_i, s = t_{i-1} on
an N-interval `sampling.grids` grid, z_t = alpha_t x + sigma_t eps,

  L = d(f_theta(z_t, t), SG[f_theta-(z_hat_s, s)]),   z_hat_s = one teacher ODE step t -> s,

lambda(t_i) = 1 (`consistency.weighting='uniform'`: the reference's CD runs use
`weight_schedule=uniform`), or 'ict': lambda_i = 1 / (sigma_i - sigma_{i-1}) in EDM's sigma
(Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models", Sec. 3.3), divided
by its mean over the N intervals so the loss keeps the uniform one's scale. The target network
theta- is `consistency.target`: 'online' = SG(theta) (mu = 0, the reference's CIFAR-10 CD:
`target_params = params` with `stopgrad`), or 'ema' = the trainer's target EMA before this
update, the loss's `ema` argument (theta- <- mu theta- + (1 - mu) theta with mu =
consistency.mu, the reference's ImageNet-64 CD 0.95), a second EMA beside the sampling one
(optim.ema_decay, the paper's 0.999943), never restarted across an N curriculum. The student and
target calls share one dropout key, as in the reference. At s = t_min the target is z_hat_s
itself (the boundary).

Teacher solvers (`consistency.teacher_solver`): 'ddim' (z_s = alpha_s x_hat + sigma_s eps_hat,
exactly the reference's `euler_solver`, an Euler step in EDM's sigma) or a `sampling.ode`
tableau ('euler', 'heun', 'rk4') stepping dz/dt = alpha' x_hat + sigma' eps_hat in t, with
the DDIM step on the last interval (s = 0, where eps_hat is ill-posed), as the ODE samplers
do. The reference's 'heun' is Heun in EDM's sigma; 'heun' here is Heun in t: another
second-order step of the same ODE.

Distances (`consistency.distance`): 'l2' and 'l1' (per-pixel means, the reference's
`mean_flat`) and 'pseudo_huber' (Song & Dhariwal 2023: sqrt(||a - b||^2 + c^2) - c,
c = 0.00054 sqrt(dim)). No LPIPS: its weights are not available offline.
"""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion.losses import mean_per_example
from diffusion.networks import build_denoiser
from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to
from diffusion.registry import Registry
from distillation.common import (check_teacher, fidelity_metrics, grid_sizes, require_sections,
                                 training_cond)
from sampling import GRIDS, ode
from sampling.grids import check_on_training_grid, karras, on_training_grid, resolve
from sampling.steps import ddim_step
from training.method import Method, Stage, register
from training.samples import sample_images

T_MIN = 0.0


def boundary_scalings(process, t, sigma_data: float):
  """(c_skip(t), c_out(t)), shape of t: the module docstring's formulas, exactly (1, 0) at t_min."""
  t = jnp.asarray(t, jnp.float32)
  alpha, sigma = process.alpha_sigma(t)
  alpha_0, sigma_0 = process.alpha_sigma(jnp.full_like(t, T_MIN))
  u = sigma * alpha_0 - alpha * sigma_0
  q, q_0 = sigma_data * alpha * alpha_0, sigma_data * alpha_0 * alpha_0
  c_skip = q * q_0 / (u**2 + q**2)
  c_out = sigma_data * u / jnp.sqrt(sigma**2 + (sigma_data * alpha) ** 2)
  at_boundary = t <= T_MIN
  return jnp.where(at_boundary, 1.0, c_skip), jnp.where(at_boundary, 0.0, c_out)


def preconditioned_output(pred: Prediction, alpha, sigma, sigma_data: float):
  """F = (sigma x_hat - sd^2 alpha eps_hat) / (sd sqrt(sigma^2 + sd^2 alpha^2)): the output of
  EDM's preconditioned network whose denoiser gives x_hat (module docstring)."""
  scale = sigma_data * jnp.sqrt(sigma**2 + (sigma_data * alpha) ** 2)
  return (sigma * pred.x - sigma_data**2 * alpha * pred.eps) / scale


def consistency_function(denoise, process, sigma_data: float):
  """The Denoiser whose x is f(z, t) = c_skip z + c_out F of the network behind `denoise`
  (eps = (z - alpha_t f) / sigma_t completes it; samplers never evaluate it at t = 0)."""

  def f(params, z, t, cond=None, *, rng=None):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), z.shape[:1])
    pred = denoise(params, z, t, cond) if rng is None else denoise(params, z, t, cond, rng=rng)
    alpha, sigma = process.alpha_sigma(broadcast_to(t, z))
    c_skip, c_out = (broadcast_to(c, z) for c in boundary_scalings(process, t, sigma_data))
    x = c_skip * z + c_out * preconditioned_output(pred, alpha, sigma, sigma_data)
    return Prediction(x=x, eps=(z - alpha * x) / sigma)

  return f


def teacher_step(solver: str, denoise, params, z, t, s, cond, process):
  """z_hat_s: one step of the teacher's probability-flow ODE from t to s (per example, (B,)),
  without gradient; 'ddim' or a `sampling.ode` tableau name (module docstring)."""
  pred = denoise(params, z, t, cond)
  alpha_s, sigma_s = process.alpha_sigma(broadcast_to(s, z))
  z_ddim = ddim_step(pred, alpha_s, sigma_s)
  if solver == "ddim":
    return jax.lax.stop_gradient(z_ddim)
  # Times broadcast against z (per example); the network takes them as (B,).
  per_example = lambda p, z, tau, c: denoise(p, z, tau.reshape(z.shape[:1]), c)
  v = lambda z, tau: ode.velocity(per_example, params, z, tau, cond, process)
  t_z, h = broadcast_to(t, z), broadcast_to(s - t, z)
  k1 = ode.velocity(lambda *_: pred, params, z, t_z, cond, process)   # reuses the call at t
  z_rk = z + h * ode.rk_slope(v, z, t_z, h, ode.TABLEAUX[solver], k1=k1)
  return jax.lax.stop_gradient(jnp.where(broadcast_to(s, z) <= T_MIN, z_ddim, z_rk))


def pseudo_huber(a, b):
  """sqrt(||a - b||^2 + c^2) - c per example, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023)."""
  c = 0.00054 * jnp.sqrt(float(a[0].size))
  return jnp.sqrt(jnp.sum(jnp.square(a - b).reshape(a.shape[0], -1), axis=1) + c**2) - c


DISTANCES = Registry("consistency distance")
DISTANCES.update({
    "l2": lambda a, b: mean_per_example(jnp.square(a - b)),
    "l1": lambda a, b: mean_per_example(jnp.abs(a - b)),
    "pseudo_huber": pseudo_huber,
})

# The target network theta- given (params, ema): SG is applied by the loss.
TARGETS = Registry("consistency target")
TARGETS.update({"online": lambda params, ema: params, "ema": lambda params, ema: ema})

SOLVERS = ("ddim",) + tuple(ode.TABLEAUX)


def n_of_k(k, total: int, s0: int, s1: int):
  """The paper's grid-size curriculum (Song et al. 2023, Appendix C, Table 3's N(k)):
  N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, from s0 at k = 0 to s1 + 1
  at k = K (numpy, k an int or array)."""
  k = np.asarray(k, np.float64)
  return (np.ceil(np.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1).astype(int)


def curriculum(total: int, s0: int, s1: int) -> list:
  """[(N, updates)]: one stage per value N(k) takes over k = 0..K-1, in order."""
  sizes, counts = np.unique(n_of_k(np.arange(total), total, s0, s1), return_counts=True)
  return [(int(n), int(c)) for n, c in zip(sizes, counts)]


def training_grid(name: str, process):
  """The grid function of `consistency.time_grid`: 'karras' (sampling.grids.karras in
  `process`'s time, the paper's) or a `sampling.grids` name (uniform, quadratic)."""
  return karras(process) if name == "karras" else GRIDS.lookup(name)


def time_grids() -> list[str]:
  return ["karras"] + list(GRIDS)


def n_of_k_ends(value) -> tuple:
  """`consistency.n_of_k` as (s0, s1), a clear error otherwise."""
  ends = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
  if len(ends) != 2 or not 1 <= ends[0] <= ends[1]:
    raise ValueError(f"consistency.n_of_k={value!r} must be (s0, s1) with 1 <= s0 <= s1, e.g. "
                     f"--config.consistency.n_of_k=2,150 (the paper's CIFAR-10 curriculum).")
  return ends


def sample_ts(cc) -> tuple:
  """`consistency.sample_ts` ('0,22' or '') as a tuple of ints."""
  return tuple(int(r) for r in str(cc.get("sample_ts", "")).split(",") if r.strip())


def edm_sigma(process, t):
  """sigma_t / alpha_t: EDM's noise level of time t."""
  alpha, sigma = process.alpha_sigma(jnp.asarray(t, jnp.float32))
  return sigma / alpha


def interval_weights(grid, process, i, n, max_n: int, weighting: str):
  """lambda_i of interval (t_{i-1}, t_i), i of shape (B,) in 1..n: 1 ('uniform') or
  1 / (sigma_i - sigma_{i-1}) over its mean on the n intervals ('ict'; max_n >= n static)."""
  if weighting == "uniform":
    return jnp.ones(jnp.shape(i), jnp.float32)
  sigma = lambda j: edm_sigma(process, grid(j, n))
  inverse_gap = lambda j: 1.0 / (sigma(j) - sigma(j - 1))
  every = jnp.arange(1, max_n + 1)
  mean = jnp.sum(jnp.where(every <= n, inverse_gap(every), 0.0)) / jnp.asarray(n, jnp.float32)
  return inverse_gap(i) / mean


WEIGHTINGS = ("uniform", "ict")


def consistency_loss(student, params, target_params, teacher, teacher_params, x, cond, rng,
                     num_intervals, process, solver: str = "heun", distance: str = "l2",
                     time_grid="uniform", weighting: str = "uniform", max_intervals=None):
  """Per-example lambda_i d(f_theta(z_t, t), SG[f_theta-(z_hat_s, s)]), shape (B,) (paper
  eq. (7)).

  student: a `consistency_function`; teacher: the teacher's Denoiser; time_grid: a grid
  name or function (`training_grid`); weighting: `interval_weights`' (max_intervals: a
  static bound on num_intervals, needed by 'ict'); gradient reaches `params` only through
  f_theta(z_t, t).
  """
  i_rng, eps_rng, drop_rng = jax.random.split(rng, 3)
  n = jnp.asarray(num_intervals, jnp.int32)
  i = jax.random.randint(i_rng, x.shape[:1], 1, n + 1)
  grid = resolve(time_grid)
  t, s = grid(i, n), grid(i - 1, n)
  z_t = process.noise(x, t, jax.random.normal(eps_rng, x.shape))
  z_s = teacher_step(solver, teacher, teacher_params, z_t, t, s, cond, process)
  target = jax.lax.stop_gradient(student(target_params, z_s, s, cond, rng=drop_rng).x)
  pred = student(params, z_t, t, cond, rng=drop_rng).x
  weights = interval_weights(grid, process, i, n, max_intervals or num_intervals, weighting)
  return weights * DISTANCES.lookup(distance)(pred, target)


@register("consistency")
class ConsistencyDistillation(Method):
  """A consistency model distilled from a teacher; frozen = the teacher's parameters. Adam
  and both EMAs run on across the stages of an N curriculum (the paper's N(k))."""
  needs_teacher = True
  restart_at_stage = False

  usage = "--config=configs/consistency.py:<preset>"

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("consistency",), self.usage)
    if config.model.guidance:
      raise ValueError("consistency distillation of a w-conditioned (guided) student is not "
                       "supported: set model.guidance=False.")
    cc = config.consistency
    self.schedule = ([(n, cc.steps_per_stage) for n in
                      grid_sizes(cc.schedule, "consistency.schedule")] if not cc.get("n_of_k")
                     else curriculum(cc.steps_per_stage, *n_of_k_ends(cc.n_of_k)))
    DISTANCES.lookup(cc.distance)
    TARGETS.lookup(cc.target)
    if cc.time_grid not in time_grids():
      raise ValueError(f"Unknown consistency.time_grid {cc.time_grid!r}; choose one of "
                       f"{time_grids()}.")
    if cc.weighting not in WEIGHTINGS:
      raise ValueError(f"Unknown consistency.weighting {cc.weighting!r}; choose one of "
                       f"{list(WEIGHTINGS)}.")
    if cc.teacher_solver not in SOLVERS:
      raise ValueError(f"Unknown consistency.teacher_solver {cc.teacher_solver!r}; choose one "
                       f"of {list(SOLVERS)}.")
    self.network, self.process, self.denoise = build_denoiser(config)
    self.student = consistency_function(self.denoise, self.process, cc.sigma_data)
    self.grid = training_grid(cc.time_grid, self.process)
    last = self.schedule[-1][0]
    self.sample_grid = on_training_grid(self.grid, last, sample_ts(cc))
    for n in {config.sample.num_steps, *grid_sizes(config.eval.num_steps, "eval.num_steps")}:
      check_on_training_grid(n, last, sample_ts(cc))
    self.teacher_config = config.copy_and_resolve_references()
    self.teacher_config.sample.sampler = cc.teacher_solver

  def init(self, rng, teacher_params):
    check_teacher(self.network, self.config.data.shape, teacher_params)
    return jax.tree.map(jnp.copy, teacher_params)

  def target_ema_decay(self):
    """consistency.mu for target='ema' (the trainer's second EMA, beside the sampling EMA)."""
    cc = self.config.consistency
    return cc.mu if cc.target == "ema" else None

  def stages(self):
    num_steps = self.config.sample.num_steps
    return [Stage(updates, {"num_steps": num_steps, "grid": n}, f"N{n}")
            for n, updates in self.schedule]

  def teacher_evaluations_per_example(self, stage):
    """One teacher ODE step: 1 network call for 'ddim', one per tableau stage otherwise."""
    solver = self.config.consistency.teacher_solver
    return 1.0 if solver == "ddim" else float(len(ode.TABLEAUX[solver].b))

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    cc = self.config.consistency
    if cc.target == "ema" and ema is None:
      raise ValueError("consistency.target='ema' needs the target EMA (the trainer passes it "
                       "as `ema`).")
    cond_rng, loss_rng = jax.random.split(rng)
    cond = training_cond(self.config, batch, cond_rng)
    losses = consistency_loss(self.student, params, TARGETS[cc.target](params, ema),
                              self.denoise, frozen, batch["image"], cond, loss_rng,
                              stage["grid"], self.process, cc.teacher_solver, cc.distance,
                              self.grid, cc.weighting, max(n for n, _ in self.schedule))
    return jnp.mean(losses), {"loss": jnp.mean(losses)}

  def sample(self, params, rng, num_samples, stage):
    """`sample.sampler` (the presets: 'consistency') over f, from training.samples.sample_images'
    noise, on the last stage's training grid (`sampling.grids.on_training_grid`, with
    `consistency.sample_ts`)."""
    return sample_images(self.config, self.student, self.process, params, rng, num_samples,
                         stage["num_steps"], time_grid=self.sample_grid)

  def stage_metrics(self, params, frozen, rng, stage):
    """The student's stage['num_steps'] sample vs the teacher's N-step solve of the ODE (the
    flow map f learns), from the same noise and labels."""
    n = self.config.consistency.fidelity_samples
    teacher = sample_images(self.teacher_config, self.denoise, self.process, frozen, rng, n,
                            stage["grid"], time_grid=self.grid)
    return fidelity_metrics(self.sample(params, rng, n, stage), teacher)
