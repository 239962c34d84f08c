"""diffusers' UNet2DModel as a Linen network (`model.name = 'diffusers_unet'`), so a teacher
trained with diffusers (google/ddpm-*) is distilled like one trained here.

Its time input is diffusers' timestep (the DDPM process's `network_time`); labels feed
its class embedding (config.json's `num_class_embeds`, here `num_classes`). Settings come from
the checkpoint's config.json (`model_settings`), which refuses what this port does not cover,
naming the key.
"""
import dataclasses
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion.diffusers_blocks import Block, TimestepEmbedding, UNetMidBlock2D, group_norm
from diffusion.unet import float32_outputs

DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}   # type -> has attention
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
# config.json keys whose only value this port implements -> that value.
FIXED = {"time_embedding_type": "positional", "act_fn": "silu", "mid_block_type": "UNetMidBlock2D",
         "downsample_type": "conv", "upsample_type": "conv", "class_embed_type": None,
         "time_embedding_dim": None}
# config.json key -> this network's field (the keys read; the rest, e.g. sample_size, the
# importer's data shape, are not the network's).
FIELDS = {"in_channels": "in_channels", "out_channels": "out_channels",
          "center_input_sample": "center_input_sample", "freq_shift": "freq_shift",
          "flip_sin_to_cos": "flip_sin_to_cos", "down_block_types": "down_block_types",
          "up_block_types": "up_block_types", "block_out_channels": "block_out_channels",
          "layers_per_block": "layers_per_block",
          "mid_block_scale_factor": "mid_block_scale_factor",
          "downsample_padding": "downsample_padding", "dropout": "dropout",
          "attention_head_dim": "attention_head_dim", "norm_num_groups": "norm_num_groups",
          "attn_norm_num_groups": "attn_norm_num_groups", "norm_eps": "norm_eps",
          "resnet_time_scale_shift": "resnet_time_scale_shift", "add_attention": "add_attention",
          "num_class_embeds": "num_classes"}


def timestep_features(timesteps, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                      max_period: float = 10_000.0):
  """diffusers' Timesteps: f_i = exp(-log(max_period) i / (dim/2 - freq_shift)),
  features [sin(t f), cos(t f)] ([cos, sin] when flip_sin_to_cos); t may be fractional."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / (half - freq_shift))
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


class DiffusersUNet(nn.Module):
  """o = UNet2DModel(z, timestep, class_labels), z and o (B, H, W, C)."""
  in_channels: int = 3
  out_channels: int = 3
  center_input_sample: bool = False
  freq_shift: float = 0.0
  flip_sin_to_cos: bool = True
  down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D")
  up_block_types: Sequence[str] = ("AttnUpBlock2D", "UpBlock2D")
  block_out_channels: Sequence[int] = (32, 64)
  layers_per_block: int = 2
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  dropout: float = 0.0
  attention_head_dim: Optional[int] = 8
  norm_num_groups: int = 32
  attn_norm_num_groups: Optional[int] = None
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = "default"
  add_attention: bool = True
  num_classes: int = 0     # config.json num_class_embeds (no null class: labels 0..n-1)
  guidance: bool = False   # the Denoiser interface's w-embedding: not part of UNet2DModel
  remat: bool = False      # nn.remat over the resnets (not a config.json key)

  def setup(self):
    if self.guidance:
      raise ValueError("model.guidance=True: diffusers' UNet2DModel has no guidance-weight "
                       "embedding; distil it with a method that needs none.")

  @nn.compact
  def __call__(self, z, time, label=None, w=None, train: bool = False):
    """`label`: class labels (B,) when num_classes > 0 (None adds no class embedding);
    `w` is ignored (no guidance embedding)."""
    del w
    chans = list(self.block_out_channels)
    if self.center_input_sample:
      z = 2.0 * z - 1.0
    features = timestep_features(jnp.broadcast_to(time, z.shape[:1]), chans[0],
                                 self.flip_sin_to_cos, self.freq_shift)
    emb = TimestepEmbedding(4 * chans[0], name="time_embedding")(features)
    if self.num_classes:
      table = nn.Embed(self.num_classes, 4 * chans[0], name="class_embedding")
      if label is not None:
        emb = emb + table(label)
      elif self.is_initializing():   # the table exists even when init sees no labels
        table(jnp.zeros(z.shape[:1], jnp.int32))

    settings = dict(groups=self.norm_num_groups, eps=self.norm_eps,
                    time_scale_shift=self.resnet_time_scale_shift, dropout=self.dropout,
                    remat=self.remat)
    head_dim = lambda c: self.attention_head_dim or c
    h = nn.Conv(chans[0], (3, 3), padding=((1, 1), (1, 1)), name="conv_in")(z)
    skips = [h]
    for i, kind in enumerate(self.down_block_types):
      h, outputs = Block(chans[i], self.layers_per_block, DOWN_BLOCKS[kind],
                         i < len(chans) - 1, False, head_dim=head_dim(chans[i]),
                         downsample_padding=self.downsample_padding, name=f"down_blocks_{i}",
                         **settings)(h, emb, train)
      skips += outputs
    h = UNetMidBlock2D(head_dim=head_dim(chans[-1]), attn_groups=self.attn_norm_num_groups,
                       add_attention=self.add_attention,
                       output_scale_factor=self.mid_block_scale_factor, name="mid_block",
                       **settings)(h, emb, train)
    for i, kind in enumerate(self.up_block_types):
      c = chans[-1 - i]
      h = Block(c, self.layers_per_block + 1, UP_BLOCKS[kind], i < len(chans) - 1, True,
                head_dim=head_dim(c), name=f"up_blocks_{i}", **settings)(h, emb, train, skips)
    h = nn.silu(group_norm(self.norm_num_groups, self.norm_eps, "conv_norm_out")(h))
    return float32_outputs(nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)),
                                   name="conv_out")(h))


def model_settings(unet_config: dict) -> dict:
  """This network's fields from a diffusers UNet2DModel config.json (a dict), or a ValueError
  naming the key whose value it does not implement."""
  if unet_config.get("_class_name", "UNet2DModel") != "UNet2DModel":
    raise ValueError(f"config.json: _class_name {unet_config['_class_name']!r} is not "
                     f"'UNet2DModel', the one diffusers model this import reads.")
  for key, value in FIXED.items():
    if unet_config.get(key, value) != value:
      raise ValueError(f"config.json: {key}={unet_config[key]!r} is not implemented (only "
                       f"{value!r}); this checkpoint cannot be imported.")
  for key, known in (("down_block_types", DOWN_BLOCKS), ("up_block_types", UP_BLOCKS)):
    for kind in unet_config.get(key, ()):
      if kind not in known:
        raise ValueError(f"config.json: {key} has the block type {kind!r}, which this import "
                         f"does not implement; it knows {sorted(known)}.")
  settings = {f.name: f.default for f in dataclasses.fields(DiffusersUNet)
              if f.name not in ("parent", "name")}   # every field, so the saved config says all
  settings.update({field: unet_config[key] for key, field in FIELDS.items()
                   if key in unet_config})
  settings["num_classes"] = settings["num_classes"] or 0
  for key in ("down_block_types", "up_block_types", "block_out_channels"):
    settings[key] = tuple(settings[key])
  if not len(settings["down_block_types"]) == len(settings["up_block_types"]) == len(
      settings["block_out_channels"]):
    raise ValueError("config.json: down_block_types, up_block_types and block_out_channels "
                     "must have one entry per level.")
  return settings
