"""A small MLP denoiser network for low-dimensional data (fast algorithm tests)."""
import flax.linen as nn
import jax

from diffusion.embeddings import ConditionEmbedding
from diffusion.heads import with_extra_heads


class MLP(nn.Module):
  """o = MLP(z) + embedding, residual hidden layers; inputs (B, ...) are flattened."""
  hidden: int = 128
  depth: int = 3
  num_classes: int = 0
  guidance: bool = False
  dropout: float = 0.0
  output_heads: int = 1   # > 1: a tuple (main output, MLPHead 2, ...) from one forward

  @nn.compact
  def __call__(self, z, time, label=None, w=None, train: bool = False):
    emb = ConditionEmbedding(self.hidden, self.num_classes, self.guidance)(time, label, w)
    shape = z.shape
    z = z.reshape(shape[0], -1)
    h = nn.Dense(self.hidden)(z) + emb
    for _ in range(self.depth):
      h = h + nn.Dense(self.hidden)(nn.swish(nn.LayerNorm()(h)))
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    o = nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros)(nn.swish(h))
    heads = with_extra_heads(o, h, self.output_heads, lambda name: MLPHead(z.shape[-1], name=name))
    return jax.tree.map(lambda a: a.reshape(shape), heads)


class MLPHead(nn.Module):
  """An extra output on the last hidden features: LayerNorm -> swish -> zero-initialised
  Dense (the MLP's analogue of the UNet's OutputHead)."""
  features: int

  @nn.compact
  def __call__(self, h):
    return nn.Dense(self.features, kernel_init=nn.initializers.zeros)(nn.swish(nn.LayerNorm()(h)))
