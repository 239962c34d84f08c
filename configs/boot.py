"""BOOT presets (data-free, one-step students): --config=configs/boot.py:<preset>
--config.teacher.workdir=<a teacher run trained with configs/teacher.py:<same preset>>.

| preset        | teacher                       | schedule N (curriculum) | updates per N | batch | lr   | w          |
|---------------|-------------------------------|-------------------------|---------------|-------|------|------------|
| digits        | digits                        | 8, 16, 32               | 300           | 64    | 2e-3 | -          |
| digits_cond   | digits_cond (10 classes)      | 8, 16, 32               | 300           | 64    | 2e-3 | U[0, 4]    |
| fashion_mnist_cpu | fashion_mnist_cpu         | 8, 16, 32               | 120           | 64    | 1e-3 | -          |
| fashion_mnist_cpu_cond | fashion_mnist_cpu_cond | 8, 16, 32              | 120           | 64    | 1e-3 | U[0, 4]    |
| fashion_mnist | fashion_mnist                 | 16, 32, 64              | 20k           | 128   | 1e-4 | -          |
| cifar10       | cifar10                       | 32, 64, 128             | 100k          | 128   | 5e-5 | -          |
| imagenet64    | imagenet64 (1000 classes)     | 32, 64, 128             | 100k          | 1024  | 1e-4 | U[0, 4]    |

No dataset is opened (the data section only gives the image shape). The `boot` section:
  schedule          the grid size N of each stage ('64', or a curriculum '16,32,64'):
                    t on t_i = i/N and s = t - 1/N;
  steps_per_stage   updates per stage;
  time_sampling     'grid' (t = i/N) or 'continuous' (t ~ U[0, 1], s = max(t - 1/N, 0));
  weighting         of L_BS per example: 'constant' (the paper's 1/delta^2 read with delta its
                    fixed time step, the same for every example) or 'inverse_delta_sq'
                    (1/delta^2 of the signal-space step: the s = 0 term, the sampled output's,
                    gets ~1e-5 of the weight on the cosine schedule);
  lambda_bc         weight of the boundary loss at t = 1;
  guidance_weight   the teacher's fixed w for a class-conditional student without w-embedding;
  w_min, w_max      w ~ U[w_min, w_max] per example for a w-conditioned student
                    (model.guidance=True; sample with --config.sample.guidance_weight=w);
  fidelity_samples  student-vs-teacher samples at each stage end (the teacher's N-step DDIM).
Students sample in one step (sample.num_steps = 1). Adam, no warm-up, lr annealed linearly
to 0 within each stage, gradient clipping 1, dropout 0. The paper reports ImageNet-64
FID 16.3 at one step; fashion_mnist, cifar10 and imagenet64 here are untested guesses.
"""
import ml_collections

from configs import teacher
from configs.base import select


def boot_config(c, schedule, steps_per_stage, lr, ema_decay=0.999, fidelity_samples=64):
  """Turn teacher preset `c` into a BOOT run over the grid sizes `schedule`."""
  c.method = "boot"
  c.boot = ml_collections.ConfigDict(dict(
      schedule=schedule, steps_per_stage=steps_per_stage, time_sampling="grid",
      weighting="constant", lambda_bc=1.0, guidance_weight=0.0, w_min=0.0, w_max=4.0,
      fidelity_samples=fidelity_samples))
  c.model.dropout = 0.0
  c.optim.update(lr=lr, warmup_steps=0, schedule="linear", grad_clip=1.0, ema_decay=ema_decay)
  c.num_train_steps = 0   # the whole schedule (a smaller value stops early, with a warning)
  c.sample.num_steps = 1
  c.checkpoint_every_steps = steps_per_stage
  c.sample_every_steps = steps_per_stage
  return c


def guided_student(c, guidance_weight=1.0):
  """A w-conditioned student (zero-initialised w-embedding) of a class-conditional teacher."""
  if not c.model.num_classes:
    c.model.num_classes = c.data.num_classes
  c.model.guidance = True
  c.sample.guidance_weight = guidance_weight
  return c


def digits():
  """300 updates per N (digits_all's shared budget), lr 2e-3: one-step FD-digits 17.9 after
  N = 32, against 21.4 at lr 5e-4 (58.0 / 27.1 / 21.4 after N = 8 / 16 / 32) and 15.3 with
  900 per N at 5e-4; 16, 32 at 450 each, 5e-4: 20.9 (the teacher's 128-step DDIM: 11.5;
  README, BOOT)."""
  return boot_config(teacher.digits(), "8,16,32", steps_per_stage=300, lr=2e-3, ema_decay=0.99)


def digits_cond():
  c = boot_config(teacher.digits_cond(), "8,16,32", steps_per_stage=300, lr=2e-3,
                  ema_decay=0.99)
  return guided_student(c)


def fashion_mnist():
  return boot_config(teacher.fashion_mnist(), "16,32,64", steps_per_stage=20_000, lr=1e-4)


def cifar10():
  return boot_config(teacher.cifar10(), "32,64,128", steps_per_stage=100_000, lr=5e-5,
                     ema_decay=0.9999)


def imagenet64():
  c = boot_config(teacher.imagenet64(), "32,64,128", steps_per_stage=100_000, lr=1e-4,
                  ema_decay=0.9999)
  c.batch_size = 1024
  return guided_student(c, guidance_weight=1.0)


def fashion_cpu(teacher_config):
  """The digits recipe on a fashion_mnist_cpu teacher: its share of the digits updates per N
  (configs/teacher.py:FASHION_CPU_SHARE) and, as on digits, the teacher's lr."""
  per_n = teacher.fashion_cpu_updates(digits().boot.steps_per_stage)
  return boot_config(teacher_config, "8,16,32", steps_per_stage=per_n,
                     lr=teacher_config.optim.lr, ema_decay=0.99)


def fashion_mnist_cpu():
  return fashion_cpu(teacher.fashion_mnist_cpu())


def fashion_mnist_cpu_cond():
  return guided_student(fashion_cpu(teacher.fashion_mnist_cpu_cond()))


PRESETS = {"digits": digits, "digits_cond": digits_cond, "fashion_mnist": fashion_mnist,
           "fashion_mnist_cpu": fashion_mnist_cpu, "fashion_mnist_cpu_cond": fashion_mnist_cpu_cond,
           "cifar10": cifar10, "imagenet64": imagenet64}


def get_config(arg=None):
  return select(PRESETS, arg, "boot")
