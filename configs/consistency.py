"""Consistency distillation presets: --config=configs/consistency.py:<preset>
--config.teacher.workdir=<a teacher run trained with configs/teacher.py:<same preset>>.

| preset        | grid N | solver | target (mu)   | updates | batch | lr    | EMA     | distance |
|---------------|--------|--------|---------------|---------|-------|-------|---------|----------|
| digits        | 16     | heun   | online (0)    | 1k      | 64    | 2e-4  | 0.99    | l2       |
| fashion_mnist_cpu | 16 | heun   | online (0)    | 300     | 64    | 2e-4  | 0.99    | l2       |
| fashion_mnist | 17     | heun   | online (0)    | 50k     | 128   | 1e-4  | 0.999   | l2       |
| cifar10       | 17     | heun   | online (0)    | 800k    | 512   | 4e-4  | 0.9999  | l2       |
| imagenet64    | 39     | heun   | ema (0.95)    | 600k    | 2048  | 8e-6  | 0.95    | l2       |

The paper's settings (Song et al. 2023, Table 3; reference configs/cifar10_ve_cd.py and
scripts/launch.sh) mapped onto this project: the paper's N counts grid points, ours the
intervals (N = 18 -> 17, 40 -> 39); the Karras rho = 7 grid in sigma on [0.002, 80], dense
near the data, becomes the quadratic grid t_i = (i/N)^2 on [0, 1] (the teacher's range; its
first point t_1 = 1/N^2 has sigma_t / alpha_t ~ 0.005 at N = 17, near the paper's 0.002; on
the uniform grid, whose last teacher step is a DDIM step from t_1 = 1/N, the digits preset's
one-step FD-digits at 1.5k updates was 29.7 against 22.4 on the quadratic grid); uniform weighting; student
dropout 0; lr constant after warm-up (CIFAR-10: 10M images, no gradient clipping). The
target network theta- is 'online' (SG(theta), the paper's mu = 0 on CIFAR-10) and the trainer's
EMA (optim.ema_decay, 0.9999 as the paper's evaluation EMA) is what samples; on ImageNet-64
the target is the EMA with mu = 0.95, and since the trainer keeps ONE EMA, it is also the one
that samples (the paper evaluates a second EMA, 0.999943, which is not kept here).
Differences: Adam for the reference's RAdam; L2 for the paper's best LPIPS (no LPIPS weights
offline); Heun in t for the reference's Heun in sigma (distillation/consistency.py).
digits and fashion_mnist are this project's choices, not the paper's.

The `consistency` section:
  schedule          grid sizes N, one stage each ((17,), or a curriculum (8, 16, 32));
  steps_per_stage   updates per stage;
  teacher_solver    'ddim' (the reference's Euler), 'euler', 'heun' or 'rk4';
  time_grid         the training grid t_i (a sampling.grids name: uniform, quadratic);
  target            'online' (mu = 0) or 'ema' (mu = optim.ema_decay);
  distance          'l2', 'l1' or 'pseudo_huber';
  sigma_data        sd of the boundary scalings (the paper's 0.5);
  fidelity_samples  student-vs-teacher samples at each stage end.
Students sample with the multistep consistency sampler (sample.sampler='consistency',
sample.num_steps = 1; --config.eval.num_steps=1,2,4 --config.eval.samplers=consistency).
"""
import ml_collections

from configs import teacher
from configs.base import select


def consistency_config(c, schedule, steps_per_stage, lr, batch_size, ema_decay, target="online",
                       warmup_steps=0, grad_clip=1.0, fidelity_samples=64):
  """Turn teacher preset `c` into a consistency-distillation run."""
  c.method = "consistency"
  c.consistency = ml_collections.ConfigDict(dict(
      schedule=tuple(schedule), steps_per_stage=steps_per_stage, teacher_solver="heun",
      time_grid="quadratic", target=target, distance="l2", sigma_data=0.5,
      fidelity_samples=fidelity_samples))
  c.model.dropout = 0.0
  c.optim.update(lr=lr, warmup_steps=warmup_steps, schedule="constant", grad_clip=grad_clip,
                 ema_decay=ema_decay)
  c.batch_size = batch_size
  c.num_train_steps = 0   # the whole schedule (a smaller value stops early, with a warning)
  c.sample.update(sampler="consistency", num_steps=1)
  c.eval.update(samplers="consistency", num_steps="1,2,4")
  c.checkpoint_every_steps = min(c.checkpoint_every_steps, steps_per_stage)
  c.sample_every_steps = min(c.sample_every_steps, steps_per_stage)
  return c


def digits():
  return consistency_config(teacher.digits(), (16,), steps_per_stage=1000, lr=2e-4,
                            batch_size=64, ema_decay=0.99)


def fashion_mnist():
  return consistency_config(teacher.fashion_mnist(), (17,), steps_per_stage=50_000, lr=1e-4,
                            batch_size=128, ema_decay=0.999)


def cifar10():
  c = consistency_config(teacher.cifar10(), (17,), steps_per_stage=800_000, lr=4e-4,
                         batch_size=512, ema_decay=0.9999, warmup_steps=10_000_000 // 512,
                         grad_clip=float("inf"))
  c.data.random_flip = True
  return c


def imagenet64():
  return consistency_config(teacher.imagenet64(), (39,), steps_per_stage=600_000, lr=8e-6,
                            batch_size=2048, ema_decay=0.95, target="ema",
                            grad_clip=float("inf"))


def fashion_mnist_cpu():
  return consistency_config(teacher.fashion_mnist_cpu(), (16,), steps_per_stage=300, lr=2e-4,
                            batch_size=64, ema_decay=0.99)


PRESETS = {"digits": digits, "fashion_mnist": fashion_mnist, "fashion_mnist_cpu": fashion_mnist_cpu,
           "cifar10": cifar10, "imagenet64": imagenet64}


def get_config(arg=None):
  return select(PRESETS, arg, "consistency")
