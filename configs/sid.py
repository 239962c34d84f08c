"""Score identity Distillation presets (data-free, one-step generators):
--config=configs/sid.py:<preset> --config.teacher.workdir=<a teacher run trained with
configs/teacher.py:<the teacher column>>.

| preset        | teacher                   | updates   | batch | lr (G = f_psi) | EMA      | dropout |
|---------------|---------------------------|-----------|-------|----------------|----------|---------|
| digits        | digits                    | 700       | 64    | 2e-4           | 0.99     | 0       |
| digits_cond   | digits_cond, w ~ U[0, 4]  | 700       | 64    | 2e-4           | 0.99     | 0       |
| fashion_mnist_cpu | fashion_mnist_cpu     | 280       | 64    | 2e-4           | 0.99     | 0       |
| fashion_mnist | fashion_mnist             | 100k      | 256   | 1e-5           | 0.99964  | 0       |
| cifar10       | cifar10                   | 1,953,125 | 256   | 1e-5           | 0.99964  | 0.13    |
| imagenet64    | imagenet64 (1000 classes) | 122,070   | 8192  | 4e-6           | 0.99716  | 0.1     |
| pretrained=<dir> | imported (--mode=import) | 1,953,125 | 256 | 1e-5        | 0.99964  | 0       |

cifar10 and imagenet64 take the paper's settings (the code's run_sid.sh) on this project's
UNet teachers (not the code's EDM networks): 500 and 1000 million generated images, alpha 1.2,
t_max 800/1000, init_sigma 2.5, the fake score on the code's EDM loss (fake_score_time
'lognormal', p_mean -1.2, p_std 1.2, weighting 'edm'), Adam b1 = 0, b2 = 0.999 for both
networks, no gradient clipping, no warm-up, constant lr, EMA half-lives of 0.5 and 2 million
images (decay 0.5^(batch / half-life)); the ImageNet teacher is conditional and unguided,
labels uniform. The other presets train the fake score on the teacher's own loss
(t ~ U(0, 1), the teacher's weighting). fashion_mnist takes the CIFAR-10 settings for fewer updates
(a guess); digits is sized to run in a few minutes on 2 CPU cores (a guess too).
Paper results at one step (FID): CIFAR-10 1.92, ImageNet-64 1.52.

No dataset is opened (the data section only gives the image shape). The `sid` section:
  alpha                 the generator loss's combination (x_real - x_fake) . ((x_real - x_g)
                        - alpha (x_real - x_fake)); 1.2 in the paper's headline runs;
  tmax                  the generator loss's t: EDM noise ladder at u ~ U(0, tmax);
  init_sigma            the generator reads sigma_t eps at the t where sigma_t / alpha_t =
                        init_sigma (EDM's noise level 2.5);
  fake_score_time       the fake score's denoising loss at t ~ U(0, 1) ('uniform', this
                        project's teacher loss) or lambda = -2 (p_mean + p_std n)
                        ('lognormal', the EDM loss of the reference code);
  p_mean, p_std         that lognormal's parameters (EDM: -1.2, 1.2);
  fake_score_weighting  the fake score's loss weighting (the teacher's diffusion.weighting;
                        'edm' with 'lognormal' gives the code's loss exactly);
  generator_lr_scale, fake_score_lr_scale   each network's lr = optim.lr * its scale;
  num_updates           length of the (single) stage;
  guidance_weight       the teacher's fixed w for a class-conditional student without
                        w-embedding (0 = the conditional teacher);
  w_min, w_max          w ~ U[w_min, w_max] per example for a w-conditioned student
                        (model.guidance=True; sample with --config.sample.guidance_weight=w).
Generators sample in one step (sample.num_steps = 1).
"""
import ml_collections

from configs import pretrained as imported
from configs import teacher
from configs.base import select
from configs.boot import guided_student


def sid_config(c, num_updates, lr, batch_size, ema_decay, dropout=0.0):
  """Turn teacher preset `c` into an SiD run of `num_updates` joint updates."""
  c.method = "sid"
  c.sid = ml_collections.ConfigDict(dict(
      alpha=1.2, tmax=0.8, init_sigma=2.5, fake_score_time="uniform", p_mean=-1.2, p_std=1.2,
      fake_score_weighting=c.diffusion.weighting, generator_lr_scale=1.0,
      fake_score_lr_scale=1.0, num_updates=num_updates, guidance_weight=0.0, w_min=0.0,
      w_max=4.0))
  c.model.dropout = dropout
  c.optim.update(lr=lr, warmup_steps=0, schedule="constant", grad_clip=float("inf"), b1=0.0,
                 b2=0.999, ema_decay=ema_decay)
  c.batch_size = batch_size
  c.num_train_steps = 0   # the whole schedule (a smaller value stops early, with a warning)
  c.sample.num_steps = 1
  return c


def ema_decay(batch_size, half_life_images):
  """The code's EMA: decay 0.5^(batch / half-life) per update."""
  return 0.5 ** (batch_size / half_life_images)


def digits():
  """lr 2e-4: one-step FD-digits 6.5 +- 0.8 over three seeds in digits_all. 5e-4 gave 4.5 on
  one seed but 4.5 / 12.0 / 7.7 on three (8.1 +- 3.8); 1e-3 gave 6.3 on one."""
  c = sid_config(teacher.digits(), num_updates=700, lr=2e-4, batch_size=64, ema_decay=0.99)
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500
  return c


def digits_cond():
  c = sid_config(teacher.digits_cond(), num_updates=700, lr=2e-4, batch_size=64,
                 ema_decay=0.99)
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500
  return guided_student(c)


def fashion_mnist():
  return sid_config(teacher.fashion_mnist(), num_updates=100_000, lr=1e-5, batch_size=256,
                    ema_decay=ema_decay(256, 500_000))


def paper_fake_score_loss(c):
  """The code's EDM loss for the fake score: lognormal sigma, EDM weighting."""
  c.sid.update(fake_score_time="lognormal", fake_score_weighting="edm")
  return c


def cifar10():
  return paper_fake_score_loss(sid_config(
      teacher.cifar10(), num_updates=500_000_000 // 256, lr=1e-5, batch_size=256,
      ema_decay=ema_decay(256, 500_000), dropout=0.13))


def imagenet64():
  return paper_fake_score_loss(sid_config(
      teacher.imagenet64(), num_updates=1_000_000_000 // 8192, lr=4e-6, batch_size=8192,
      ema_decay=ema_decay(8192, 2_000_000), dropout=0.1))


def fashion_mnist_cpu():
  num_updates = teacher.fashion_cpu_updates(digits().sid.num_updates)
  c = sid_config(teacher.fashion_mnist_cpu(), num_updates=num_updates, lr=2e-4, batch_size=64,
                 ema_decay=0.99)
  c.checkpoint_every_steps = num_updates // 2
  c.sample_every_steps = num_updates // 2
  return c


PRESETS = {"digits": digits, "digits_cond": digits_cond, "fashion_mnist": fashion_mnist,
           "fashion_mnist_cpu": fashion_mnist_cpu, "cifar10": cifar10, "imagenet64": imagenet64}


def pretrained(workdir):
  """A teacher imported from diffusers (--mode=import) into `workdir`: the cifar10 settings,
  without dropout (the imported network's own setting is kept at 0)."""
  return sid_config(imported.teacher(workdir), num_updates=500_000_000 // 256, lr=1e-5,
                    batch_size=256, ema_decay=ema_decay(256, 500_000))


def get_config(arg=None):
  workdir = imported.workdir_of(arg)
  return pretrained(workdir) if workdir else select(PRESETS, arg, "sid")
