"""A small MLP denoiser network for low-dimensional data (fast algorithm tests).

`dtype` is the compute dtype (as the UNet's); parameters and the output stay float32.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion.embeddings import ConditionEmbedding
from diffusion.heads import with_extra_heads
from diffusion.unet import float32_outputs


class MLP(nn.Module):
  """o = MLP(z) + embedding, residual hidden layers; inputs (B, ...) are flattened."""
  hidden: int = 128
  depth: int = 3
  num_classes: int = 0
  guidance: bool = False
  dropout: float = 0.0
  output_heads: int = 1   # > 1: a tuple (main output, MLPHead 2, ...) from one forward
  dtype: str = "float32"  # compute dtype; parameters and the output stay float32

  @nn.compact
  def __call__(self, z, time, label=None, w=None, train: bool = False):
    dt = jnp.dtype(self.dtype)
    emb = ConditionEmbedding(self.hidden, self.num_classes, self.guidance, dt)(time, label, w)
    shape = z.shape
    z = z.reshape(shape[0], -1)
    h = nn.Dense(self.hidden, dtype=dt)(z) + emb
    for _ in range(self.depth):
      h = h + nn.Dense(self.hidden, dtype=dt)(nn.swish(nn.LayerNorm(dtype=dt)(h)))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    o = nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros, dtype=dt)(nn.swish(h))
    heads = with_extra_heads(o, h, self.output_heads,
                             lambda name: MLPHead(z.shape[-1], dt, name=name))
    return float32_outputs(jax.tree.map(lambda a: a.reshape(shape), heads))


class MLPHead(nn.Module):
  """An extra output on the last hidden features: LayerNorm -> swish -> zero-initialised
  Dense (the MLP's analogue of the UNet's OutputHead)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    dt = self.dtype
    return nn.Dense(self.features, kernel_init=nn.initializers.zeros,
                    dtype=dt)(nn.swish(nn.LayerNorm(dtype=dt)(h)))
