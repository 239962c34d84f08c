"""Catch-Up Distillation presets (DESIGN.md 5.6): --config=configs/catch_up.py:<preset>.

A velocity model on the linear flow trained from data in one session (method 'catch_up'; no
teacher). `--config.method=flow_matching` trains the same network with plain flow matching
(the baseline the catch-up term is measured against).

| preset        | network (UNet)                              | updates | batch | lr   | warm-up |
|---------------|---------------------------------------------|---------|-------|------|---------|
| digits        | as configs/teacher.py:digits                | 2k      | 64    | 2e-3 | 100     |
| fashion_mnist_cpu | as configs/teacher.py:fashion_mnist_cpu | 800     | 64    | 1e-3 | 200     |
| fashion_mnist | ch 32, (2, 2, 2), 2 blocks, dropout 0.13    | 50k     | 256   | 3e-4 | 5k      |
| mnist         | as fashion_mnist                            | 50k     | 256   | 3e-4 | 5k      |
| cifar10       | ch 128, (2, 2, 2), 4 blocks, attn 16, dropout 0.13 | 500k | 128 | 2e-4 | 5k  |

fashion_mnist / mnist follow the reference's MNIST run (SongUNet 32 channels, 2.2M
parameters; its attention at 16 pixels never fires at 28x28, so none here), cifar10 its
DDPM++ run (SongUNet 128 channels, 55.7M parameters); both with Adam, EMA 0.9999, a
5k-step warm-up. The reference has no gradient clipping; the project's default clip of 1 is
kept. digits has the digits teacher's network and budget, so the pipeline compares them at
equal updates (the catch-up step costs about one more no-gradient forward per update).

The `cud` section:
  order        Runge-Kutta heads k = 1, 2, 3 (the paper's "Runge-Kutta 12 / 23 / 34")
  delta        catch-up step Delta: 'uniform' U(0, 1/N) (reference), 'origin' 1/N, 'rule' t/N
  num_steps    N of Delta (16)
  e0           t = e0 + (1 - e0) U; targets fall back to eps - x where t < e0 + k Delta
  sample_head  the head sampling uses (0 = head k, as the reference's --generator k)
Sampling: `sample.sampler` euler (the reference's 16 Euler steps), heun (two evaluations per
step but the last), rk4, or ddim (= euler on the flow); `sample.num_steps` = N.

One-step stage (presets <dataset>_onestep, method 'catch_up_onestep', DESIGN.md 5.6): the
catch-up run is the teacher; two commands on one workdir (same `cud.order` as the run):

  python main.py --mode=pairs --config=configs/catch_up.py:digits_onestep \
      --config.teacher.workdir=runs/cud --workdir=runs/cud_onestep      # EMA trajectories
  python main.py --config=configs/catch_up.py:digits_onestep \
      --config.teacher.workdir=runs/cud --workdir=runs/cud_onestep      # the student

| preset                | trajectories + held-out | per curriculum point | batch | lr   |
|-----------------------|-------------------------|----------------------|-------|------|
| digits_onestep        | 8,192 + 1,024           | 300                  | 64    | 2e-3 |
| fashion_mnist_cpu_onestep | 2,048 + 256         | 120                  | 64    | 1e-3 |
| fashion_mnist, mnist  | 50,000 + 2,048          | 40k                  | 256   | 3e-4 |
| cifar10_onestep       | 50,000 + 2,048          | 40k                  | 128   | 2e-4 |

The reference distils 50k trajectories (generate.py --num_samples 50000) for 40k iterations
per point, 3 points: 500k + 120k = the paper's 620k CIFAR-10 iterations; no warm-up. Each
row stores z and all 16 x_hat_0 (float32: 9.8 GB for CIFAR-10's 50k rows). The `onestep`
section: trajectory_steps (16 Euler steps), curriculum (points m of x_hat_0 at t = (N - m)/N,
one stage each), steps_per_point, ema_weight (0.1, the anchor term's weight), anchor_decay
(0.9999 as the reference; 0.99 in the short digits and fashion_mnist_cpu presets, measured
better there), the anchor EMA's rate; Adam and the EMAs run on across points; the online student
samples, sample.use_ema=False, as the reference saves and evaluates it), num_trajectories, num_heldout, shard_size,
generation_batch_size (rows per teacher call on one host; the files depend on it),
trajectory_seed.
"""
import ml_collections

from configs import teacher
from configs.base import base_config, select


def catch_up_config(c, order=1, delta="uniform", num_steps=16, e0=1e-5):
  """Turn preset `c` into a catch-up run: the linear flow, velocity output, the `cud` section,
  16 Euler steps to sample with."""
  c.method = "catch_up"
  c.diffusion.update(process="flow", parameterization="velocity")
  c.cud = ml_collections.ConfigDict(dict(order=order, delta=delta, num_steps=num_steps, e0=e0,
                                         sample_head=0))
  c.sample.update(sampler="euler", num_steps=16)
  return c


def digits():
  return catch_up_config(teacher.digits())


def _mnist_like(dataset):
  c = base_config(dataset)
  c.model.update(ch=32, ch_mult=(2, 2, 2), num_res_blocks=2, attn_resolutions=(), dropout=0.13)
  c.optim.update(lr=3e-4, warmup_steps=5000, ema_decay=0.9999)
  c.batch_size = 256
  c.num_train_steps = 50_000
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000
  return catch_up_config(c)


def fashion_mnist():
  return _mnist_like("fashion_mnist")


def mnist():
  return _mnist_like("mnist")


def cifar10():
  c = base_config("cifar10")
  c.data.random_flip = True
  c.model.update(ch=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                 dropout=0.13)
  c.optim.update(lr=2e-4, warmup_steps=5000, ema_decay=0.9999)
  c.batch_size = 128
  c.num_train_steps = 500_000
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000
  return catch_up_config(c)


def onestep_config(c, steps_per_point, num_trajectories, num_heldout, shard_size,
                   generation_batch_size, curriculum=(8, 11, 14), anchor_decay=0.9999):
  """Turn catch-up preset `c` into its one-step stage (method 'catch_up_onestep')."""
  c.method = "catch_up_onestep"
  c.onestep = ml_collections.ConfigDict(dict(
      trajectory_steps=16, curriculum=curriculum, steps_per_point=steps_per_point,
      ema_weight=0.1, anchor_decay=anchor_decay, num_trajectories=num_trajectories,
      num_heldout=num_heldout,
      shard_size=shard_size, generation_batch_size=generation_batch_size, trajectory_seed=0))
  c.optim.warmup_steps = 0
  c.num_train_steps = 0   # the whole curriculum (a smaller value stops early, with a warning)
  c.sample.update(num_steps=1, use_ema=False)   # the reference samples the online student
  c.checkpoint_every_steps = min(c.checkpoint_every_steps, steps_per_point)
  c.sample_every_steps = min(c.sample_every_steps, steps_per_point)
  return c


def digits_onestep():
  """anchor_decay 0.99: over 900 updates the reference's 0.9999 anchor stays ~91% the
  initialisation and pulls the student to its one-step Euler map (FD-digits 35.1 against 22.9
  with 0.99; Catch-Up's own 8-step Heun 13.6)."""
  return onestep_config(digits(), steps_per_point=300, num_trajectories=8192, num_heldout=1024,
                        shard_size=2048, generation_batch_size=512, anchor_decay=0.99)


def fashion_mnist_cpu():
  """The fashion_mnist_cpu teacher's network for its share of digits' updates
  (configs/teacher.py:FASHION_CPU_SHARE): 800, not the teacher's 5k."""
  return catch_up_config(teacher.fashion_mnist_cpu_short(
      teacher.fashion_cpu_updates(digits().num_train_steps)))


def fashion_mnist_cpu_onestep():
  per_point = teacher.fashion_cpu_updates(digits_onestep().onestep.steps_per_point)
  return onestep_config(fashion_mnist_cpu(), steps_per_point=per_point, anchor_decay=0.99,
                        num_trajectories=2048, num_heldout=256, shard_size=2048, generation_batch_size=512)


def fashion_mnist_onestep():
  return onestep_config(fashion_mnist(), steps_per_point=40_000, num_trajectories=50_000,
                        num_heldout=2048, shard_size=5000, generation_batch_size=500)


def mnist_onestep():
  return onestep_config(mnist(), steps_per_point=40_000, num_trajectories=50_000,
                        num_heldout=2048, shard_size=5000, generation_batch_size=500)


def cifar10_onestep():
  return onestep_config(cifar10(), steps_per_point=40_000, num_trajectories=50_000,
                        num_heldout=2048, shard_size=2500, generation_batch_size=500)


PRESETS = {"digits": digits, "fashion_mnist": fashion_mnist, "mnist": mnist, "cifar10": cifar10,
           "fashion_mnist_cpu": fashion_mnist_cpu,
           "fashion_mnist_cpu_onestep": fashion_mnist_cpu_onestep,
           "digits_onestep": digits_onestep, "fashion_mnist_onestep": fashion_mnist_onestep,
           "mnist_onestep": mnist_onestep, "cifar10_onestep": cifar10_onestep}


def get_config(arg=None):
  return select(PRESETS, arg, "catch_up")
