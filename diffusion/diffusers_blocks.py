"""The layers of diffusers' UNet2DModel in Linen, named as its state-dict keys name them
(`resnets_0` for `resnets.0`), so a checkpoint maps onto them tensor by tensor.

Images are (B, H, W, C); every layer computes in float32 with exact (two-pass) GroupNorm
variances, as torch does.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.unet import jax_resize, rematerialised


def group_norm(groups: int, eps: float, name: str):
  """torch.nn.GroupNorm(groups, C, eps): per-group mean and variance, affine scale and bias."""
  return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def conv3x3(channels: int, name: str, stride: int = 1, pad_before: int = 1):
  """Conv2d(k=3): stride 1 pads 1 on every side; a stride-2 Downsample2D pads `pad_before`
  (its downsample_padding) at the top/left and 1 at the bottom/right, as torch does."""
  padding = ((pad_before, 1), (pad_before, 1))
  return nn.Conv(channels, (3, 3), strides=(stride, stride), padding=padding, name=name)


class TimestepEmbedding(nn.Module):
  """emb = linear_2(silu(linear_1(features)))."""
  dim: int

  @nn.compact
  def __call__(self, features):
    h = nn.silu(nn.Dense(self.dim, name="linear_1")(features))
    return nn.Dense(self.dim, name="linear_2")(h)


class ResnetBlock2D(nn.Module):
  """h = conv1(silu(norm1(x))); 'default': h = norm2(h + proj(silu(emb))), 'scale_shift':
  (scale, shift) = proj(silu(emb)), h = norm2(h) (1 + scale) + shift;
  out = (shortcut(x) + conv2(dropout(silu(h)))) / output_scale_factor."""
  out_channels: int
  groups: int
  eps: float
  time_scale_shift: str = "default"
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  remat: bool = False   # recompute the block's activations for the gradient (jax.checkpoint)

  def __call__(self, x, emb, train: bool):
    return rematerialised(ResnetBlock2D.residual, self.remat)(self, x, emb, train)

  @nn.compact
  def residual(self, x, emb, train: bool):
    c = self.out_channels
    h = conv3x3(c, "conv1")(nn.silu(group_norm(self.groups, self.eps, "norm1")(x)))
    scale_shift = self.time_scale_shift == "scale_shift"
    temb = nn.Dense(2 * c if scale_shift else c, name="time_emb_proj")(nn.silu(emb))
    temb = temb[:, None, None, :]
    norm2 = group_norm(self.groups, self.eps, "norm2")
    if scale_shift:
      scale, shift = jnp.split(temb, 2, axis=-1)
      h = norm2(h) * (1.0 + scale) + shift
    else:
      h = norm2(h + temb)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv3x3(c, "conv2")(h)
    if x.shape[-1] != c:
      x = nn.Conv(c, (1, 1), name="conv_shortcut")(x)
    return (x + h) / self.output_scale_factor


class Attention(nn.Module):
  """diffusers' spatial self-attention (the former AttentionBlock): optional GroupNorm, then
  softmax(q k^T / sqrt(d)) v per head over the H W positions, to_out, a residual, and the
  division by rescale_output_factor."""
  head_dim: int
  groups: Optional[int]
  eps: float
  rescale_output_factor: float = 1.0

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    heads = c // self.head_dim
    y = x if self.groups is None else group_norm(self.groups, self.eps, "group_norm")(x)
    y = y.reshape(b, hh * ww, c)
    split = lambda a: a.reshape(b, hh * ww, heads, self.head_dim)
    q, k, v = (split(nn.Dense(c, name=name)(y)) for name in ("to_q", "to_k", "to_v"))
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.head_dim))
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hh * ww, c)
    y = nn.Dense(c, name="to_out_0")(y).reshape(b, hh, ww, c)
    return (y + x) / self.rescale_output_factor


class Sampler2D(nn.Module):
  """Downsample2D (a stride-2 3x3 conv) or Upsample2D (nearest x2, then a 3x3 conv)."""
  up: bool
  padding: int = 1

  @nn.compact
  def __call__(self, h):
    c = h.shape[-1]
    if self.up:
      b, hh, ww, _ = h.shape
      return conv3x3(c, "conv")(jax_resize(h, (b, 2 * hh, 2 * ww, c)))
    return conv3x3(c, "conv", stride=2, pad_before=self.padding)(h)


class Block(nn.Module):
  """DownBlock2D / AttnDownBlock2D (up=False) or UpBlock2D / AttnUpBlock2D (up=True):
  `num_layers` resnets (an up block's each on [h, the last skip]), each followed by attention
  in the Attn types, then the resampler unless it is the last level. A down block returns
  (h, its outputs: the skips); an up block consumes skips from the end of `skips`."""
  out_channels: int
  num_layers: int
  attention: bool
  resample: bool
  up: bool
  groups: int
  eps: float
  time_scale_shift: str
  head_dim: int
  dropout: float = 0.0
  downsample_padding: int = 1
  remat: bool = False

  @nn.compact
  def __call__(self, h, emb, train: bool, skips=None):
    outputs = []
    for i in range(self.num_layers):
      if self.up:
        h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = ResnetBlock2D(self.out_channels, self.groups, self.eps, self.time_scale_shift,
                        self.dropout, remat=self.remat, name=f"resnets_{i}")(h, emb, train)
      if self.attention:
        h = Attention(self.head_dim, self.groups, self.eps, name=f"attentions_{i}")(h)
      outputs.append(h)
    if self.resample:
      name = "upsamplers_0" if self.up else "downsamplers_0"
      h = Sampler2D(self.up, self.downsample_padding, name=name)(h)
      outputs.append(h)
    return h if self.up else (h, outputs)


class UNetMidBlock2D(nn.Module):
  """resnet, then (attention, resnet) x num_layers; the attention's GroupNorm has
  `attn_groups` groups (None: resnet groups under 'default', no norm under 'scale_shift')."""
  groups: int
  eps: float
  time_scale_shift: str
  head_dim: int
  attn_groups: Optional[int] = None
  add_attention: bool = True
  output_scale_factor: float = 1.0
  dropout: float = 0.0
  num_layers: int = 1
  remat: bool = False

  @nn.compact
  def __call__(self, h, emb, train: bool):
    c = h.shape[-1]
    attn_groups = self.attn_groups
    if attn_groups is None and self.time_scale_shift == "default":
      attn_groups = self.groups
    resnet = lambda i: ResnetBlock2D(c, self.groups, self.eps, self.time_scale_shift,
                                     self.dropout, self.output_scale_factor, self.remat,
                                     name=f"resnets_{i}")
    h = resnet(0)(h, emb, train)
    for i in range(self.num_layers):
      if self.add_attention:
        h = Attention(self.head_dim, attn_groups, self.eps, self.output_scale_factor,
                      name=f"attentions_{i}")(h)
      h = resnet(i + 1)(h, emb, train)
    return h
