"""Matryoshka Diffusion presets: --config=configs/matryoshka.py:<preset>.

| preset        | resolutions  | inner network (lowest)                 | outer shells          | weights | p |
|---------------|--------------|----------------------------------------|-----------------------|---------|---|
| digits        | 8, 4         | UNet ch 8, (1, 2), attn 2              | ch 16, (1, 2)         | 1:1     | 1 |
| digits_plain  | 8            | the digits teacher's UNet (the control)| none                  | 1       | - |
| fashion_mnist_cpu | 28, 14   | UNet ch 12, (1, 2), 2 blocks, attn 7   | ch 16, (1, 2), 2 blk  | 1:1     | 1 |
| fashion_mnist | 28, 14       | UNet ch 64, (1, 2), 2 blocks, attn 7   | ch 32, (1, 2), 2 blk  | 1:1     | 1 |
| mnist         | 28, 14       | as fashion_mnist                       | as fashion_mnist      | 1:1     | 1 |
| cifar10       | 32, 16       | UNet ch 256, (1, 2, 2), 3 blocks, attn 16, dropout 0.2 | ch 64, (1, 2), 2 blk | 1:1 | 1 |
| imagenet64    | 64, 32, 16   | UNet ch 192, (1, 2, 3), 3 blocks, attn 16/8, 1000 classes | ch 96 and 48, (1, 2), 2 blk | 16:4:1 | 1 |

Resolutions and weights are listed highest first (as ml-mdm's `multi_res_weights`). The paper's
settings where they apply (apple/ml-mdm cc12m_256x256 / cc12m_1024x1024 configs): v-prediction
with the eps-MSE loss (`diffusion.weighting='snr'`; 'snr+1' is the teacher's v-MSE) and no VDM
weights, outer shells narrower than the inner network (ml-mdm 64-128-256 around 256-512-768
channels) with no attention and no middle blocks, 1:1 weights for two resolutions and 16:4:1
for three; imagenet64 also takes its optimiser (lr 5e-5, 10k warm-up, gradient clip 2, batch
1024).

Shift power p (snr_r = snr / (res_r / res_lowest)^p; the paper (Sec. 3.1-3.2) shifts each
resolution's schedule with its size and leaves the amount to the code): ml-mdm's two-level
256/64 config uses p = 1 (its default, `schedule_shifted_power`) and its three-level
1024/256/64 config p = 2. Every preset here uses p = 1: the two-level presets (ratio 2) as the
two-level reference; imagenet64 (three levels, ratio 4 in all) keeps p = 1 as ml-mdm's 4x
ratio does, not the 1024 config's p = 2, which goes with a 16x ratio. On digits p = 2 was
measured against p = 1 (README, Matryoshka).

The small presets keep their teacher preset's optimiser, batch and step count so a
Matryoshka run and a plain teacher compare step for step (bench/matryoshka.py), and they are
sized to compare at **equal parameters**: the outer shell gets the teacher's width (at 8x8 or
28x28 the shell is the only part of the network that sees the full resolution) and the inner
network is as wide as keeps the whole at most the teacher's parameters (digits 184,538 against
193,441; fashion_mnist_cpu 366,786 against 441,873). On digits this layout measured FD-digits
10.0 at 64 steps grown (7.5 from scratch) against 15.7 (10.1) for the paper's narrower shell
(ch 8 around a ch 16 inner, 231,250 parameters; README, Matryoshka). The larger presets keep the
paper's narrower shells, where the inner resolutions are large enough to carry the image.

Progressive growth (the paper's Sec. 3.3): `<preset>_inner` trains the inner network alone on
the lower resolutions (a plain UNet on the data pooled to the lowest one); then
  --config=configs/matryoshka.py:<preset> --config.mdm.inner_workdir=<that run>
starts the full model from it with a fresh outer shell (nothing frozen, every loss kept).
"""
import ml_collections

from configs import teacher
from configs.base import select


def matryoshka_config(c, resolutions, loss_weights, inner, shells, shift_power=1.0):
  """Turn teacher preset `c` into a Matryoshka run: `inner` the lowest resolution's UNet
  settings, `shells` the outer shells' settings from the innermost out."""
  c.method = "matryoshka"
  c.diffusion.weighting = "snr"     # the paper's eps-MSE
  c.mdm = ml_collections.ConfigDict(dict(
      resolutions=tuple(resolutions), loss_weights=tuple(loss_weights),
      shift_power=shift_power, inner_workdir=""))
  conditions = dict(num_classes=c.model.num_classes, guidance=False, dropout=c.model.dropout,
                    dtype=c.model.dtype, remat=c.model.remat)
  model = dict(c.model, **inner)
  for shell in shells:
    model = dict(name="nested_unet", inner=model, attn_resolutions=(), num_heads=1, **conditions,
                 **shell)
  c.model = ml_collections.ConfigDict(model)
  c.sample.num_steps = 64
  return c


def inner_run(c):
  """The inner network of Matryoshka preset `c` trained alone on its lower resolutions."""
  c.mdm.resolutions = tuple(c.mdm.resolutions)[1:]
  c.mdm.loss_weights = tuple(c.mdm.loss_weights)[1:]
  c.model = ml_collections.ConfigDict(c.model.inner.to_dict())
  return c


def digits():
  return matryoshka_config(teacher.digits(), (8, 4), (1, 1),
                           inner=dict(ch=8, ch_mult=(1, 2), attn_resolutions=(2,)),
                           shells=[dict(ch=16, ch_mult=(1, 2), num_res_blocks=1)])


def digits_plain():
  """The control: the digits teacher's UNet alone at 8x8 on Matryoshka's loss (one
  resolution, no shell), so that it differs from the teacher only in `diffusion.weighting`."""
  return matryoshka_config(teacher.digits(), (8,), (1,), inner={}, shells=[])


def _mnist_like(c):
  return matryoshka_config(c, (28, 14), (1, 1),
                           inner=dict(ch=64, ch_mult=(1, 2), num_res_blocks=2,
                                      attn_resolutions=(7,)),
                           shells=[dict(ch=32, ch_mult=(1, 2), num_res_blocks=2)])


def fashion_mnist():
  return _mnist_like(teacher.fashion_mnist())


def mnist():
  return _mnist_like(teacher.mnist())


def cifar10():
  return matryoshka_config(teacher.cifar10(), (32, 16), (1, 1),
                           inner=dict(ch=256, ch_mult=(1, 2, 2), num_res_blocks=3,
                                      attn_resolutions=(16,)),
                           shells=[dict(ch=64, ch_mult=(1, 2), num_res_blocks=2)])


def imagenet64():
  c = matryoshka_config(teacher.imagenet64(), (64, 32, 16), (16, 4, 1),
                        inner=dict(ch=192, ch_mult=(1, 2, 3), num_res_blocks=3,
                                   attn_resolutions=(16, 8)),
                        shells=[dict(ch=96, ch_mult=(1, 2), num_res_blocks=2),
                                dict(ch=48, ch_mult=(1, 2), num_res_blocks=2)])
  c.optim.update(lr=5e-5, warmup_steps=10_000, grad_clip=2.0)
  c.batch_size = 1024
  return c


def fashion_mnist_cpu():
  """The fashion_mnist preset at a quarter of its widths on the fashion_mnist_cpu teacher's
  optimiser, for its share of digits' updates (configs/teacher.py:FASHION_CPU_SHARE): 800."""
  num_updates = teacher.fashion_cpu_updates(digits().num_train_steps)
  return matryoshka_config(teacher.fashion_mnist_cpu_short(num_updates), (28, 14), (1, 1),
                           inner=dict(ch=12, ch_mult=(1, 2), num_res_blocks=2,
                                      attn_resolutions=(7,)),
                           shells=[dict(ch=16, ch_mult=(1, 2), num_res_blocks=2)])


PRESETS = {"digits": digits, "digits_plain": digits_plain, "fashion_mnist": fashion_mnist,
           "fashion_mnist_cpu": fashion_mnist_cpu,
           "mnist": mnist, "cifar10": cifar10, "imagenet64": imagenet64}
PRESETS.update({f"{name}_inner": (lambda preset=preset: inner_run(preset()))
                for name, preset in list(PRESETS.items()) if name != "digits_plain"})


def get_config(arg=None):
  return select(PRESETS, arg, "matryoshka")
