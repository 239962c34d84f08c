"""ADM / improved-DDPM style UNet in Linen.

GroupNorm + swish residual blocks with FiLM (scale, shift) from the conditioning
embedding, self-attention at chosen resolutions, zero-initialised output convs.
Input and output are (B, H, W, C) images.

Mixed precision: `dtype` is the compute dtype of every layer (e.g. 'bfloat16' on
accelerators); parameters stay float32 (flax's param_dtype), normalisation statistics and
the attention softmax run in float32, and the output is float32.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.embeddings import ConditionEmbedding
from diffusion.heads import with_extra_heads

zeros = nn.initializers.zeros


def norm(x, dtype=jnp.float32):
  return nn.GroupNorm(num_groups=min(32, x.shape[-1] // 4 or 1), dtype=dtype)(x)


def float32_outputs(o):
  """A network's output (or tuple of head outputs) in float32, for the loss and samplers."""
  return jax.tree.map(lambda a: a.astype(jnp.float32), o)


def rematerialised(method, remat: bool):
  """`method(module, x, emb, train)`, under nn.remat when `remat`: its activations are
  recomputed on the backward pass instead of stored. A method, not the module class, is
  wrapped, so the module keeps its name and the parameter tree is the same either way."""
  return nn.remat(method, static_argnums=(3,)) if remat else method


class ResBlock(nn.Module):
  """h = x + conv(dropout(swish(FiLM(norm(conv(swish(norm(x)))), emb)))), zero-init last conv."""
  channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False   # recompute the block's activations for the gradient (jax.checkpoint)

  def __call__(self, x, emb, train: bool):
    return rematerialised(ResBlock.residual, self.remat)(self, x, emb, train)

  @nn.compact
  def residual(self, x, emb, train: bool):
    dt = self.dtype
    h = nn.Conv(self.channels, (3, 3), dtype=dt)(nn.swish(norm(x, dt)))
    scale, shift = jnp.split(nn.Dense(2 * self.channels, dtype=dt)(nn.swish(emb)), 2, axis=-1)
    h = norm(h, dt) * (1.0 + scale[:, None, None]) + shift[:, None, None]
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(h))
    h = nn.Conv(self.channels, (3, 3), kernel_init=zeros, dtype=dt)(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), dtype=dt)(x)
    return x + h


class AttnBlock(nn.Module):
  """Residual multi-head self-attention over the spatial positions, zero-init output."""
  num_heads: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = norm(x, self.dtype).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(self.num_heads, out_kernel_init=zeros, dtype=self.dtype,
                                        force_fp32_for_softmax=True)(y, y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """o = UNet(z, time, label, w): channel multipliers per level, `num_res_blocks` per level."""
  ch: int = 64
  ch_mult: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = ()
  num_heads: int = 1
  dropout: float = 0.0
  num_classes: int = 0
  guidance: bool = False
  output_heads: int = 1   # > 1: a tuple (main output, OutputHead 2, ...) from one forward
  dtype: str = "float32"  # compute dtype; parameters and the output stay float32
  remat: bool = False     # recompute the ResBlocks' activations for the gradient

  @nn.compact
  def __call__(self, z, time, label=None, w=None, train: bool = False, features=None,
               return_features: bool = False):
    """`features` (optional) are added to the input convolution's output (a NestedUNet's
    in_adapter); `return_features` also returns the last decoder features: (output, h)."""
    dt = jnp.dtype(self.dtype)
    emb = ConditionEmbedding(4 * self.ch, self.num_classes, self.guidance, dt)(time, label, w)
    block, _ = _blocks(self)

    h = nn.Conv(self.ch, (3, 3), dtype=dt)(z)
    if features is not None:
      h = h + features
    h, skips = down_path(self, h, emb, train)

    h = block(h.shape[-1])(h, emb, train)
    h = AttnBlock(self.num_heads, dt)(h)
    h = block(h.shape[-1])(h, emb, train)

    h = up_path(self, h, skips, emb, train)
    o = nn.Conv(z.shape[-1], (3, 3), kernel_init=zeros, dtype=dt)(nn.swish(norm(h, dt)))
    o = float32_outputs(with_extra_heads(
        o, h, self.output_heads, lambda name: OutputHead(z.shape[-1], dt, name=name)))
    return (o, h) if return_features else o


# The encoder and decoder halves, shared with the NestedUNet's outer shell. `net` is the module
# whose compact method calls them (its fields ch, ch_mult, num_res_blocks, attn_resolutions,
# num_heads, dropout, dtype, remat); the layers they create are that module's, named in creation
# order.

def _blocks(net):
  """(block(channels), maybe_attn(h)): a ResBlock, and attention at net.attn_resolutions."""
  dt = jnp.dtype(net.dtype)

  def maybe_attn(h):
    return AttnBlock(net.num_heads, dt)(h) if h.shape[1] in net.attn_resolutions else h

  return (lambda c: ResBlock(c, net.dropout, dt, net.remat)), maybe_attn


def down_path(net, h, emb, train):
  """Residual blocks and stride-2 convolutions from the input convolution's output h; returns
  the lowest-resolution features and the skip activations (h first)."""
  block, maybe_attn = _blocks(net)
  skips = [h]
  for level, mult in enumerate(net.ch_mult):
    for _ in range(net.num_res_blocks):
      h = maybe_attn(block(net.ch * mult)(h, emb, train))
      skips.append(h)
    if level != len(net.ch_mult) - 1:
      h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=jnp.dtype(net.dtype))(h)
      skips.append(h)
  return h, skips


def up_path(net, h, skips, emb, train):
  """Residual blocks over [h, skip] and nearest-neighbour upsampling back to the input size;
  consumes every skip activation."""
  block, maybe_attn = _blocks(net)
  for level, mult in reversed(list(enumerate(net.ch_mult))):
    for _ in range(net.num_res_blocks + 1):
      h = maybe_attn(block(net.ch * mult)(jnp.concatenate([h, skips.pop()], -1), emb, train))
    if level != 0:
      b, hh, ww, c = h.shape
      h = jax_resize(h, (b, 2 * hh, 2 * ww, c))
      h = nn.Conv(c, (3, 3), dtype=jnp.dtype(net.dtype))(h)
  assert not skips
  return h


class OutputHead(nn.Module):
  """An extra output on the last decoder features: GroupNorm -> swish -> zero-initialised
  3x3 conv (CUD's Runge-Kutta heads), so it starts at exactly zero."""
  channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    return nn.Conv(self.channels, (3, 3), kernel_init=zeros,
                   dtype=self.dtype)(nn.swish(norm(h, self.dtype)))


def jax_resize(x, shape):
  """Nearest-neighbour upsampling by an integer factor."""
  fh, fw = shape[1] // x.shape[1], shape[2] // x.shape[2]
  return jnp.repeat(jnp.repeat(x, fh, axis=1), fw, axis=2)
