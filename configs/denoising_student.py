"""Denoising Student presets (Luhman & Luhman 2021; DESIGN.md 5.4):
--config=configs/denoising_student.py:<preset> --config.teacher.workdir=<a teacher trained with
configs/teacher.py:<same preset>>. Two commands on one workdir:

  python main.py --mode=pairs --config=configs/denoising_student.py:digits \
      --config.teacher.workdir=runs/digits --workdir=runs/digits_student     # offline pairs
  python main.py --config=configs/denoising_student.py:digits \
      --config.teacher.workdir=runs/digits --workdir=runs/digits_student     # the student

| preset        | teacher DDIM        | pairs + held-out    | loss | batch | steps | lr, warm-up | EMA   |
|---------------|---------------------|---------------------|------|-------|-------|-------------|-------|
| digits        | 32 steps, quadratic | 8,192 + 1,024       | L2   | 64    | 1.25k | 5e-4, 100   | 0.995 |
| fashion_mnist_cpu | 32, quadratic   | 2,048 + 256         | L2   | 64    | 500   | 5e-4, 50    | 0.995 |
| fashion_mnist | 100, quadratic      | 204,800 + 10,240    | L2   | 256   | 20k   | 2e-4, 1k    | 0.995 |
| cifar10       | 100, quadratic      | 1,024,000 + 51,200  | L1   | 512   | 50k   | 2e-4, 5k    | 0.995 |

cifar10 is the reference's setting (tcl9876/Denoising_Student utils.get_settings: Adam b1 0.9,
b2 0.98, lr 2e-4 with 5k linear warm-up then constant, batch 512, 25 epochs of 1.024M pairs =
50k steps, EMA 0.995, L1 for CIFAR and L2 elsewhere, 51,200 held-out pairs scored once per
epoch); the others keep its optimizer and scale the pairs and steps to the dataset. Every
preset: the teacher preset's network with dropout 0, sampling 1 step. The held-out loss of
the EMA is scored every `eval_every_steps` and the best checkpoint kept (--mode=sample and
--mode=eval use it). The reference's quadratic grid stops at DDPM index 800 of 1000; ours
is t_i = (i/N)^2 up to t = 1 (sampling.grids).

The `distill` section: teacher_steps, time_grid (the teacher's DDIM grid), loss ('l1' | 'l2',
summed over pixels, mean over the batch), num_pairs, num_heldout, shard_size (rows per shard
file), generation_batch_size (rows per teacher call on one host; the files depend on it),
pairs_seed, guidance_weight (a class-conditional teacher's fixed w; labels are drawn
uniformly).
"""
import ml_collections

from configs import teacher
from configs.base import select


def student_config(c, teacher_steps, num_pairs, num_heldout, loss, batch_size, steps, lr,
                   warmup_steps, eval_every_steps, shard_size, generation_batch_size):
  """Turn teacher preset `c` into a Denoising Student run."""
  c.method = "denoising_student"
  c.distill = ml_collections.ConfigDict(dict(
      teacher_steps=teacher_steps, time_grid="quadratic", loss=loss, num_pairs=num_pairs,
      num_heldout=num_heldout, shard_size=shard_size,
      generation_batch_size=generation_batch_size, pairs_seed=0, guidance_weight=0.0))
  c.model.dropout = 0.0
  c.optim.update(lr=lr, warmup_steps=warmup_steps, schedule="constant", b1=0.9, b2=0.98,
                 ema_decay=0.995)
  c.batch_size = batch_size
  c.num_train_steps = steps
  c.eval_every_steps = eval_every_steps
  c.checkpoint_every_steps = eval_every_steps
  c.sample_every_steps = eval_every_steps
  c.sample.num_steps = 1
  return c


def digits_student(teacher_config):
  """The digits settings on a digits teacher preset (digits or digits_cond)."""
  c = student_config(teacher_config, teacher_steps=32, num_pairs=8192, num_heldout=1024,
                     loss="l2", batch_size=64, steps=1250, lr=5e-4, warmup_steps=100,
                     eval_every_steps=250, shard_size=2048, generation_batch_size=512)
  c.log_every_steps = 50
  return c


def digits():
  return digits_student(teacher.digits())


def fashion_mnist():
  return student_config(teacher.fashion_mnist(), teacher_steps=100, num_pairs=204_800,
                        num_heldout=10_240, loss="l2", batch_size=256, steps=20_000, lr=2e-4,
                        warmup_steps=1000, eval_every_steps=1000, shard_size=10_240,
                        generation_batch_size=512)


def cifar10():
  c = student_config(teacher.cifar10(), teacher_steps=100, num_pairs=1_024_000,
                     num_heldout=51_200, loss="l1", batch_size=512, steps=50_000, lr=2e-4,
                     warmup_steps=5000, eval_every_steps=2000, shard_size=10_240,
                     generation_batch_size=1024)
  c.data.random_flip = False   # the student reads pairs, not images
  return c


def fashion_mnist_cpu():
  c = student_config(teacher.fashion_mnist_cpu(), teacher_steps=32, num_pairs=2048,
                     num_heldout=256, loss="l2", batch_size=64,
                     steps=teacher.fashion_cpu_updates(digits().num_train_steps), lr=5e-4,
                     warmup_steps=50, eval_every_steps=125, shard_size=2048,
                     generation_batch_size=512)
  c.log_every_steps = 50
  return c


PRESETS = {"digits": digits, "fashion_mnist": fashion_mnist, "fashion_mnist_cpu": fashion_mnist_cpu,
           "cifar10": cifar10}


def get_config(arg=None):
  return select(PRESETS, arg, "denoising_student")
