"""Consistency distillation presets: --config=configs/consistency.py:<preset>
--config.teacher.workdir=<a teacher run trained with configs/teacher.py:<same preset>>.

| preset        | grid N | solver | target (mu)   | updates | batch | lr    | EMA     | eval steps |
|---------------|--------|--------|---------------|---------|-------|-------|---------|------------|
| digits        | 32     | heun   | ema (0.95)    | 1k      | 64    | 2e-4  | 0.99    | 1, 2, 4    |
| fashion_mnist_cpu | 32 | heun   | ema (0.95)    | 400     | 64    | 2e-4  | 0.99    | 1, 2, 4    |
| fashion_mnist | 18     | heun   | ema (0.95)    | 50k     | 128   | 1e-4  | 0.999   | 1, 2, 3    |
| cifar10       | 18     | heun   | online (0)    | 800k    | 512   | 4e-4  | 0.9999  | 1, 2, 3    |
| imagenet64    | 40     | heun   | ema (0.95)    | 600k    | 2048  | 8e-6  | 0.999943| 1, 2, 4    |

The paper's settings (Song et al. 2023, Table 3; reference configs/cifar10_ve_cd.py and
scripts/launch.sh) mapped onto this project. Every preset trains on the paper's grid: Karras rho
= 7 in EDM's sigma on [0.002, 80] (`time_grid='karras'`, sampling.grids.karras in the process's
time, plus the boundary t_0 = 0), so N here is the paper's N (18, 40). It replaced the quadratic
grid t_i = (i/N)^2, whose one interval above sigma = 5.2 (of 16) left the student biased at
intermediate times (on the analytic Gaussian the bias at t ~ 0.5 was 2.6x the bias at t = 1, and
the 1/2/4-step mean errors grew 0.017 / 0.037 / 0.071; on Karras 0.003 / 0.009 / 0.014, with the
EMA target 0.010 / 0.006 / 0.009: README). The paper's uniform weighting on cifar10 and
imagenet64; improved CT's 1 / (sigma_i - sigma_{i-1}) (`weighting='ict'`) on digits and
Fashion-MNIST, where it measured better (digits, 1k updates, FD-digits at 1 / 2 / 4 steps: 20.9
/ 27.3 / 26.7 uniform, 21.7 / 18.9 / 19.9 ict, 21.1 / 17.3 / 17.5 ict at N = 32: README).
Student dropout 0; lr constant after warm-up (CIFAR-10: 10M images, no gradient clipping). The
target network theta- is the paper's: 'online' (SG(theta), mu = 0) on CIFAR-10, a second EMA
with mu = 0.95 (consistency.mu) on ImageNet-64, sampled from the trainer's EMA (optim.ema_decay,
the paper's 0.999943); digits and Fashion-MNIST take mu = 0.95 (measured better than 'online' at
their short budgets). Sampling steps are training-grid points: an eval step count divides N (or
is len(sample_ts)).
Differences: Adam for the reference's RAdam; L2 for the paper's best LPIPS (no LPIPS weights
offline); Heun in t for the reference's Heun in sigma (distillation/consistency.py).
digits and fashion_mnist are this project's choices, not the paper's.

The `consistency` section:
  schedule          grid sizes N, one stage each ((17,), or a curriculum (8, 16, 32));
  steps_per_stage   updates per stage (with n_of_k: K, the curriculum's total);
  n_of_k            () or (s0, s1): in place of `schedule`, the paper's N(k) curriculum
                    (Appendix C) over K updates, one stage per N, Adam and the EMAs kept;
  teacher_solver    'ddim' (the reference's Euler), 'euler', 'heun' or 'rk4';
  time_grid         the training grid t_i: 'karras' (the presets; the paper's rho = 7 in EDM's
                    sigma, in the process's time) or a sampling.grids name (uniform, quadratic);
  target            'online' (mu = 0) or 'ema' (the trainer's second EMA, rate mu);
  mu                the target EMA's rate (target='ema'; the sampling EMA is optim.ema_decay);
  distance          'l2', 'l1' or 'pseudo_huber';
  weighting         'uniform' (the paper's lambda = 1) or 'ict' (1 / (sigma_i - sigma_{i-1}),
                    improved CT's, normalised to mean 1 over the grid; the small presets);
  sigma_data        sd of the boundary scalings (the paper's 0.5);
  sample_ts         '' or the grid indices the sampler evaluates f at, counted from the noise
                    end (0 = t_N), as the reference's `--ts` without its last (boundary)
                    index: '0,22' for its 0,22,39; other step counts must divide N;
  fidelity_samples  student-vs-teacher samples at each stage end.
Students sample with the multistep consistency sampler (sample.sampler='consistency',
sample.num_steps = 1; --config.eval.num_steps=1,2,4 --config.eval.samplers=consistency) on
the last stage's training grid: n steps evaluate f at t_N, t_{N - N/n}, ..., so n must divide
N (or be len(sample_ts)); other counts are refused with an error.
"""
import ml_collections

from configs import teacher
from configs.base import select


def consistency_config(c, schedule, steps_per_stage, lr, batch_size, ema_decay, target="ema",
                       mu=0.95, warmup_steps=0, grad_clip=1.0, fidelity_samples=64,
                       eval_steps="1,2,4", weighting="ict"):
  """Turn teacher preset `c` into a consistency-distillation run."""
  c.method = "consistency"
  c.consistency = ml_collections.ConfigDict(dict(
      schedule=tuple(schedule), steps_per_stage=steps_per_stage, teacher_solver="heun",
      time_grid="karras", target=target, mu=mu, distance="l2", weighting=weighting,
      sigma_data=0.5,
      n_of_k=(), sample_ts="", fidelity_samples=fidelity_samples))
  c.model.dropout = 0.0
  c.optim.update(lr=lr, warmup_steps=warmup_steps, schedule="constant", grad_clip=grad_clip,
                 ema_decay=ema_decay)
  c.batch_size = batch_size
  c.num_train_steps = 0   # the whole schedule (a smaller value stops early, with a warning)
  c.sample.update(sampler="consistency", num_steps=1)
  c.eval.update(samplers="consistency", num_steps=eval_steps)
  c.checkpoint_every_steps = min(c.checkpoint_every_steps, steps_per_stage)
  c.sample_every_steps = min(c.sample_every_steps, steps_per_stage)
  return c


def digits():
  return consistency_config(teacher.digits(), (32,), steps_per_stage=1000, lr=2e-4,
                            batch_size=64, ema_decay=0.99)


def fashion_mnist():
  return consistency_config(teacher.fashion_mnist(), (18,), steps_per_stage=50_000, lr=1e-4,
                            batch_size=128, ema_decay=0.999, eval_steps="1,2,3")


def cifar10():
  c = consistency_config(teacher.cifar10(), (18,), steps_per_stage=800_000, lr=4e-4,
                         batch_size=512, ema_decay=0.9999, target="online", mu=0.0,
                         warmup_steps=10_000_000 // 512, grad_clip=float("inf"),
                         eval_steps="1,2,3", weighting="uniform")
  c.data.random_flip = True
  return c


def imagenet64():
  return consistency_config(teacher.imagenet64(), (40,), steps_per_stage=600_000, lr=8e-6,
                            batch_size=2048, ema_decay=0.999943, grad_clip=float("inf"),
                            weighting="uniform")


def fashion_mnist_cpu():
  d = digits()
  return consistency_config(teacher.fashion_mnist_cpu(), d.consistency.schedule,
                            steps_per_stage=teacher.fashion_cpu_updates(
                                d.consistency.steps_per_stage),
                            lr=d.optim.lr, batch_size=d.batch_size,
                            ema_decay=d.optim.ema_decay)


PRESETS = {"digits": digits, "fashion_mnist": fashion_mnist, "fashion_mnist_cpu": fashion_mnist_cpu,
           "cifar10": cifar10, "imagenet64": imagenet64}


def get_config(arg=None):
  return select(PRESETS, arg, "consistency")
