"""Guided distillation presets (method 'guided': stage 1 + progressive halving in one run):
--config=configs/guided.py:<preset> --config.teacher.workdir=<a class-conditional teacher>.

| preset        | teacher (class-conditional)     | w      | stage 1 | halvings       | batch | lr   |
|---------------|---------------------------------|--------|---------|----------------|-------|------|
| digits        | digits_cond (10 classes)        | [0, 4] | 450     | 64 -> 1, 100   | 64    | 5e-4 |
| fashion_mnist_cpu | fashion_mnist_cpu_cond      | [0, 4] | 180     | 64 -> 1, 40    | 64    | 5e-4 |
| fashion_mnist | fashion_mnist, num_classes=10   | [0, 4] | 5k      | 256 -> 1, 5k   | 128   | 1e-4 |
| cifar10       | cifar10, num_classes=10         | [0, 4] | 50k     | 8192 -> 1, 50k | 128   | 5e-5 |
| imagenet64    | imagenet64 (1000 classes)       | [0, 4] | 50k     | 1024 -> 1, 50k | 2048  | 1e-4 |

The teacher column names configs/teacher.py presets (train the fashion_mnist and cifar10
teachers with --config.model.num_classes=10). Everything else as in
configs/progressive.py. digits: ~0.14 s per update on 2 CPU cores (on CPU both phases'
losses run, see distillation.common.branch), ~5 minutes in all.

config.model describes the student: the teacher's network with model.guidance=True (the
zero-initialised w-embedding). The `guided` section: w_min, w_max (w ~ U[w_min, w_max] per
example in both stages), w_steps (stage-1 updates). Sampling: --config.sample.sampler=ddim
or stochastic, --config.sample.guidance_weight=w. `--config.method=guided_w` runs stage 1
alone (then `progressive` with the same preset and teacher.workdir = that run).
"""
import ml_collections

from configs import progressive, teacher
from configs.base import select


def guided_config(c, w_steps, w_min=0.0, w_max=4.0, guidance_weight=1.0):
  """Turn progressive preset `c` into guided distillation of a class-conditional teacher."""
  c.method = "guided"
  if not c.model.num_classes:
    c.model.num_classes = c.data.num_classes
  c.model.guidance = True
  c.guided = ml_collections.ConfigDict(dict(w_min=w_min, w_max=w_max, w_steps=w_steps))
  c.sample.guidance_weight = guidance_weight
  return c


def digits():
  """450 stage-1 updates, then 100 per halving (1050 in all, as with 150 for every stage):
  the halvings lose little, and stage 1 (the w-embedding, learnt from zero) is what held the
  one-step student back. One-step FD-digits at w = 0 / 2: 7.8 / 29.9, against 16.3 / 36.0
  with 150 per stage and 12.1 / 27.9 with 750 then 50 (README, digits_all)."""
  c = progressive.digits_distill(teacher.digits_cond(), steps_per_stage=100)
  return guided_config(c, w_steps=450)


def fashion_mnist():
  return guided_config(progressive.fashion_mnist(), w_steps=5000)


def cifar10():
  return guided_config(progressive.cifar10(), w_steps=50_000)


def imagenet64():
  return guided_config(progressive.imagenet64(), w_steps=50_000)


def fashion_mnist_cpu():
  d = digits()
  per_stage = teacher.fashion_cpu_updates(d.distill.steps_per_stage)
  c = progressive.digits_distill(teacher.fashion_mnist_cpu_cond(), steps_per_stage=per_stage)
  return guided_config(c, w_steps=teacher.fashion_cpu_updates(d.guided.w_steps))


PRESETS = {"digits": digits, "fashion_mnist": fashion_mnist, "fashion_mnist_cpu": fashion_mnist_cpu,
           "cifar10": cifar10, "imagenet64": imagenet64}


def get_config(arg=None):
  return select(PRESETS, arg, "guided")
