"""Matryoshka Diffusion's NestedUNet (Gu et al. 2310.15111, Sec. 3.2; apple/ml-mdm nested_unet.py).

An outer UNet shell over the highest resolution around an inner network over the lower ones
(a UNet, or a NestedUNet for more levels):

  h = down_path(conv_in(z_hi))                      outer down blocks, no middle blocks
  (o_lo..., f) = inner(z_lo..., features=in_adapter(h))   added to the inner's input conv
  h = h + out_adapter(f)                            f = the inner's last decoder features
  o_hi = conv_out(up_path(h))                       outer up blocks, zero-initialised output

in_adapter and out_adapter are zero-initialised 3x3 convolutions, so a fresh outer shell around
a trained inner network leaves the inner's outputs exactly unchanged (progressive growth), and
the low-resolution outputs then do not depend on z_hi at all. The outer's bottom size, its
resolution / 2^(len(ch_mult) - 1), must be the inner's resolution.

z and the output are tuples with one (B, H_r, W_r, C) array per resolution, lowest first.
Every level gets the same `time` (the caller's unshifted network time, never a resolution's
shifted logSNR) and the same label and w. Each level embeds them with its own
ConditionEmbedding of its own width, as each ml-mdm level has its own time-embedding MLP
(ml-mdm shares the text encoder's output, which class-conditional models here do not have),
so a trained inner network keeps its own embedding when a shell is grown around it.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.embeddings import ConditionEmbedding
from diffusion.unet import down_path, float32_outputs, norm, up_path

zeros = nn.initializers.zeros


class NestedUNet(nn.Module):
  """(o_1, ..., o_R) = NestedUNet((z_1, ..., z_R), time, label, w); `inner` is the network of
  z_1..z_{R-1} (a UNet when R = 2), the other fields are the outer shell's UNet settings."""
  inner: nn.Module
  ch: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attn_resolutions: Sequence[int] = ()
  num_heads: int = 1
  dropout: float = 0.0
  num_classes: int = 0
  guidance: bool = False
  dtype: str = "float32"
  remat: bool = False   # the outer shell's ResBlocks; the inner network has its own

  @nn.compact
  def __call__(self, z, time, label=None, w=None, train: bool = False, features=None,
               return_features: bool = False):
    """`features` / `return_features` as in UNet, for a NestedUNet that is itself an inner."""
    *z_inner, z_hi = z
    check_nesting(self, z_hi.shape[1], [a.shape[1] for a in z_inner])
    dt = jnp.dtype(self.dtype)
    emb = ConditionEmbedding(4 * self.ch, self.num_classes, self.guidance, dt)(time, label, w)
    h = nn.Conv(self.ch, (3, 3), dtype=dt)(z_hi)
    if features is not None:
      h = h + features
    h, skips = down_path(self, h, emb, train)

    in_features = nn.Conv(self.inner.ch, (3, 3), kernel_init=zeros, dtype=dt,
                          name="in_adapter")(h)
    inner_input = tuple(z_inner) if len(z_inner) > 1 else z_inner[0]
    o_inner, f = self.inner(inner_input, time, label, w, train, features=in_features,
                            return_features=True)
    h = h + nn.Conv(h.shape[-1], (3, 3), kernel_init=zeros, dtype=dt, name="out_adapter")(f)

    h = up_path(self, h, skips, emb, train)
    o_hi = nn.Conv(z_hi.shape[-1], (3, 3), kernel_init=zeros, dtype=dt)(nn.swish(norm(h, dt)))
    o = (o_inner if isinstance(o_inner, tuple) else (o_inner,)) + (float32_outputs(o_hi),)
    return (o, h) if return_features else o


def check_nesting(net: NestedUNet, resolution: int, inner_resolutions):
  """Raise a clear error unless the outer's bottom size is the inner's resolution and the
  levels agree on the classes and the w-embedding."""
  bottom = resolution // 2 ** (len(net.ch_mult) - 1)
  if not inner_resolutions or bottom != inner_resolutions[-1]:
    raise ValueError(f"A NestedUNet outer shell with ch_mult={tuple(net.ch_mult)} turns "
                     f"{resolution}x{resolution} into {bottom}x{bottom} features, but the inner "
                     f"resolutions are {list(inner_resolutions)}: the next lower resolution must "
                     f"be {bottom} (one halving per extra ch_mult level).")
  if (net.inner.num_classes, net.inner.guidance) != (net.num_classes, net.guidance):
    raise ValueError(f"The outer shell has num_classes={net.num_classes}, guidance="
                     f"{net.guidance} but its inner network num_classes={net.inner.num_classes}, "
                     f"guidance={net.inner.guidance}: every level takes the same conditions.")


def nested_resolutions(network, resolution: int) -> tuple:
  """The resolutions, lowest first, that `network` takes when its top one is `resolution`
  (just (resolution,) for a plain network)."""
  if not isinstance(network, NestedUNet):
    return (resolution,)
  return nested_resolutions(network.inner, resolution // 2 ** (len(network.ch_mult) - 1)) + (
      resolution,)

