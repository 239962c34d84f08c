"""ADM / improved-DDPM style UNet in Linen.

GroupNorm + swish residual blocks with FiLM (scale, shift) from the conditioning
embedding, self-attention at chosen resolutions, zero-initialised output convs.
Input and output are (B, H, W, C) images.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.embeddings import ConditionEmbedding
from diffusion.heads import with_extra_heads

zeros = nn.initializers.zeros


def norm(x):
  return nn.GroupNorm(num_groups=min(32, x.shape[-1] // 4 or 1))(x)


class ResBlock(nn.Module):
  """h = x + conv(dropout(swish(FiLM(norm(conv(swish(norm(x)))), emb)))), zero-init last conv."""
  channels: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, emb, train: bool):
    h = nn.Conv(self.channels, (3, 3))(nn.swish(norm(x)))
    scale, shift = jnp.split(nn.Dense(2 * self.channels)(nn.swish(emb)), 2, axis=-1)
    h = norm(h) * (1.0 + scale[:, None, None]) + shift[:, None, None]
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.swish(h))
    h = nn.Conv(self.channels, (3, 3), kernel_init=zeros)(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1))(x)
    return x + h


class AttnBlock(nn.Module):
  """Residual multi-head self-attention over the spatial positions, zero-init output."""
  num_heads: int = 1

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = norm(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(self.num_heads, out_kernel_init=zeros)(y, y)
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

  @nn.compact
  def __call__(self, z, time, label=None, w=None, train: bool = False):
    emb = ConditionEmbedding(4 * self.ch, self.num_classes, self.guidance)(time, label, w)
    block = lambda c: ResBlock(c, self.dropout)

    def maybe_attn(h):
      return AttnBlock(self.num_heads)(h) if h.shape[1] in self.attn_resolutions else h

    h = nn.Conv(self.ch, (3, 3))(z)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = maybe_attn(block(self.ch * mult)(h, emb, train))
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
        skips.append(h)

    h = block(h.shape[-1])(h, emb, train)
    h = AttnBlock(self.num_heads)(h)
    h = block(h.shape[-1])(h, emb, train)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = maybe_attn(block(self.ch * mult)(jnp.concatenate([h, skips.pop()], -1), emb, train))
      if level != 0:
        b, hh, ww, c = h.shape
        h = jax_resize(h, (b, 2 * hh, 2 * ww, c))
        h = nn.Conv(c, (3, 3))(h)
    assert not skips
    o = nn.Conv(z.shape[-1], (3, 3), kernel_init=zeros)(nn.swish(norm(h)))
    return with_extra_heads(o, h, self.output_heads, lambda name: OutputHead(z.shape[-1], name=name))


class OutputHead(nn.Module):
  """An extra output on the last decoder features: GroupNorm -> swish -> zero-initialised
  3x3 conv (CUD's Runge-Kutta heads), so it starts at exactly zero."""
  channels: int

  @nn.compact
  def __call__(self, h):
    return nn.Conv(self.channels, (3, 3), kernel_init=zeros)(nn.swish(norm(h)))


def jax_resize(x, shape):
  """Nearest-neighbour upsampling by an integer factor."""
  fh, fw = shape[1] // x.shape[1], shape[2] // x.shape[2]
  return jnp.repeat(jnp.repeat(x, fh, axis=1), fw, axis=2)
