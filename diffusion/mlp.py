"""A small MLP denoiser network for low-dimensional data (fast algorithm tests)."""
import flax.linen as nn

from diffusion.embeddings import ConditionEmbedding


class MLP(nn.Module):
  """o = MLP(z) + embedding, residual hidden layers; inputs (B, ...) are flattened."""
  hidden: int = 128
  depth: int = 3
  num_classes: int = 0
  guidance: bool = False
  dropout: float = 0.0

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
    return o.reshape(shape)
