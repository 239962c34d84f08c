"""Progressive distillation presets: --config=configs/progressive.py:<preset>
--config.teacher.workdir=<a teacher run trained with configs/teacher.py:<same preset>>.

| preset        | teacher -> student steps | updates per halving | batch | lr   |
|---------------|--------------------------|---------------------|-------|------|
| digits        | 64 -> 32, ..., 1         | 300                 | 64    | 5e-4 |
| fashion_mnist_cpu | 64 -> 32, ..., 1     | 120                 | 64    | 5e-4 |
| fashion_mnist | 256 -> 128, ..., 1       | 5k                  | 128   | 1e-4 |
| cifar10       | 8192 -> 4096, ..., 1     | 50k                 | 128   | 5e-5 |
| imagenet64    | 1024 -> 512, ..., 1      | 50k                 | 2048  | 1e-4 |
| pretrained=<workdir> | 1024 -> 512, ..., 1 | 50k               | 128   | 5e-5 |

pretrained=<workdir>: a teacher imported with --mode=import (configs/pretrained.py), with
the CIFAR-10 preset's settings.

Every preset: the teacher preset's network, dropout 0, no EMA (ema_decay 0), Adam with
the learning rate annealed linearly to 0 within each halving, no warm-up, gradient
clipping 1, truncated-SNR weighting. The `distill` section: teacher_steps, min_steps,
steps_per_stage, fidelity_samples (student-vs-teacher samples at each stage end), weighting.
digits: ~0.09 s per update on 2 CPU cores (batch 64), so all 6 halvings take ~3 minutes.
The `progressive_encoder` method (the distilled DDIM encoder) uses the same presets:
--config.method=progressive_encoder.
"""
import ml_collections

from configs import pretrained as imported
from configs import teacher
from configs.base import select


def distill_config(c, teacher_steps, steps_per_stage, lr, min_steps=1, fidelity_samples=64):
  """Turn teacher preset `c` into a distillation run of the halvings teacher_steps -> min_steps."""
  c.method = "progressive"
  c.distill = ml_collections.ConfigDict(dict(
      teacher_steps=teacher_steps, min_steps=min_steps, steps_per_stage=steps_per_stage,
      fidelity_samples=fidelity_samples, weighting="truncated_snr"))
  c.model.dropout = 0.0
  c.optim.update(lr=lr, warmup_steps=0, schedule="linear", grad_clip=1.0, ema_decay=0.0)
  c.num_train_steps = 0   # the whole schedule (a smaller value stops early, with a warning)
  c.sample.num_steps = min_steps
  return c


def digits_distill(teacher_config, steps_per_stage=300):
  """The digits schedule (64 -> 1 steps, batch 64) on a teacher preset (digits or digits_cond;
  fashion_mnist_cpu with fewer updates per stage)."""
  c = distill_config(teacher_config, teacher_steps=64, steps_per_stage=steps_per_stage, lr=5e-4)
  c.batch_size = 64
  c.checkpoint_every_steps = steps_per_stage
  c.sample_every_steps = steps_per_stage
  return c


def digits():
  return digits_distill(teacher.digits())


def fashion_mnist():
  c = distill_config(teacher.fashion_mnist(), teacher_steps=256, steps_per_stage=5000, lr=1e-4)
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000
  return c


def cifar10():
  c = distill_config(teacher.cifar10(), teacher_steps=8192, steps_per_stage=50_000, lr=5e-5)
  c.data.random_flip = True
  return c


def imagenet64():
  return distill_config(teacher.imagenet64(), teacher_steps=1024, steps_per_stage=50_000,
                        lr=1e-4)


def fashion_mnist_cpu():
  per_stage = teacher.fashion_cpu_updates(digits().distill.steps_per_stage)
  return digits_distill(teacher.fashion_mnist_cpu(), steps_per_stage=per_stage)


PRESETS = {"digits": digits, "fashion_mnist": fashion_mnist, "fashion_mnist_cpu": fashion_mnist_cpu,
           "cifar10": cifar10, "imagenet64": imagenet64}


def pretrained(workdir):
  """A teacher imported from diffusers (--mode=import) into `workdir`."""
  c = distill_config(imported.teacher(workdir), teacher_steps=1024, steps_per_stage=50_000,
                     lr=5e-5)
  c.batch_size = 128
  return c


def get_config(arg=None):
  workdir = imported.workdir_of(arg)
  return pretrained(workdir) if workdir else select(PRESETS, arg, "progressive")
