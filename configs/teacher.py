"""Teacher training presets: --config=configs/teacher.py:<preset>.

| preset        | data            | network                  | steps  | batch | lr    |
|---------------|-----------------|--------------------------|--------|-------|-------|
| digits        | 8x8 digits      | UNet ch 16, (1, 2)       | 2k     | 64    | 2e-3  |
| digits_cond   | 8x8, 10 classes | as digits, label dropout 0.1 | 2k | 64 | 2e-3  |
| fashion_mnist_cpu | 28x28       | UNet ch 16, (1, 2, 2), attn 7 | 5k | 64 | 1e-3  |
| fashion_mnist_cpu_cond | 28x28, 10 classes | as fashion_mnist_cpu | 1k | 64 | 1e-3 |
| fashion_mnist | 28x28           | UNet ch 64, (1, 2, 2)    | 100k   | 128   | 2e-4  |
| mnist         | 28x28 (TFDS)    | UNet ch 64, (1, 2, 2)    | 100k   | 128   | 2e-4  |
| cifar10       | 32x32 (TFDS)    | UNet ch 256, (1, 2, 2, 2), 3 blocks, attn 16, dropout 0.2 | 800k | 128 | 2e-4 |
| imagenet64    | 64x64, 1000 cls | UNet ch 192, (1, 2, 3, 4), 3 blocks, attn 32/16/8, label dropout 0.1 | 400k | 2048 | 3e-4 |

CIFAR-10 follows the progressive-distillation paper's teacher (x-prediction would
also do; v with snr+1 weighting is used throughout), ImageNet 64 its
class-conditional guided teacher.
"""
from configs.base import base_config, select


def digits():
  return base_config("digits")


def digits_cond():
  """Class-conditional digits teacher (label dropout 0.1), for guided distillation."""
  c = base_config("digits")
  c.model.num_classes = 10
  return c


def _mnist_like(dataset):
  c = base_config(dataset)
  c.model.update(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,))
  c.optim.update(lr=2e-4, warmup_steps=1000)
  c.batch_size = 128
  c.num_train_steps = 100_000
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 5000
  return c


def fashion_mnist():
  return _mnist_like("fashion_mnist")


def fashion_mnist_cpu():
  """Fashion-MNIST sized for 2 CPU cores (43 minutes measured): the fashion_mnist network at a
  quarter of its width, 5k updates of 64 (configs/pipeline.py:fashion_mnist_cpu)."""
  c = base_config("fashion_mnist")
  c.model.update(ch=16, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,))
  c.optim.update(lr=1e-3, warmup_steps=200)
  c.num_train_steps = 5000
  c.checkpoint_every_steps = 1000
  c.sample_every_steps = 1000
  return c


# The fashion_mnist_cpu presets of the other methods take this share of their digits preset's
# updates: the digits presets are sized to one budget (each about the digits teacher's wall-clock
# for its 2k updates), and one factor keeps them equal on Fashion-MNIST while the pipeline
# fits ~3 hours of 2 CPU cores (configs/pipeline.py:fashion_mnist_cpu).
FASHION_CPU_SHARE = 0.4


def fashion_cpu_updates(digits_updates: int) -> int:
  """A method's fashion_mnist_cpu updates from its digits preset's: x FASHION_CPU_SHARE."""
  return round(digits_updates * FASHION_CPU_SHARE)


def fashion_mnist_cpu_short(num_train_steps):
  """fashion_mnist_cpu for a short run from scratch (the pipeline's conditional teacher,
  Catch-Up, Matryoshka): `num_train_steps` updates."""
  c = fashion_mnist_cpu()
  c.num_train_steps = num_train_steps
  return c


def fashion_mnist_cpu_cond():
  """The class-conditional fashion_mnist_cpu teacher (label dropout 0.1), 1k updates."""
  c = fashion_mnist_cpu_short(1000)
  c.model.num_classes = 10
  return c


def mnist():
  return _mnist_like("mnist")


def cifar10():
  c = base_config("cifar10")
  c.data.random_flip = True
  c.model.update(ch=256, ch_mult=(1, 2, 2, 2), num_res_blocks=3, attn_resolutions=(16,),
                 dropout=0.2)
  c.optim.update(lr=2e-4, warmup_steps=5000, ema_decay=0.9999)
  c.batch_size = 128
  c.num_train_steps = 800_000
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000
  return c


def imagenet64():
  c = base_config("imagenet_resized/64x64")
  c.data.random_flip = True
  c.model.update(ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8),
                 num_heads=4, dropout=0.1, num_classes=1000)
  c.diffusion.p_uncond = 0.1
  c.optim.update(lr=3e-4, warmup_steps=10_000, ema_decay=0.9999)
  c.batch_size = 2048
  c.num_train_steps = 400_000
  c.checkpoint_every_steps = 10_000
  c.sample_every_steps = 10_000
  return c


PRESETS = {"digits": digits, "digits_cond": digits_cond, "fashion_mnist": fashion_mnist,
           "fashion_mnist_cpu": fashion_mnist_cpu, "fashion_mnist_cpu_cond": fashion_mnist_cpu_cond,
           "mnist": mnist, "cifar10": cifar10, "imagenet64": imagenet64}


def get_config(arg=None):
  return select(PRESETS, arg, "teacher")
