"""Conditioning embeddings shared by the networks: time, class label, guidance weight."""
import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal(x, dim: int, max_period: float = 10_000.0):
  """Transformer-style features [cos(x f_i), sin(x f_i)], f_i = max_period^(-i / (dim/2))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(x, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ConditionEmbedding(nn.Module):
  """Sum of a time MLP, a learned class embedding (null class = num_classes) and a
  zero-initialised guidance-weight MLP, so a guided student starts equal to its teacher.
  `dtype` is the compute dtype (the sinusoidal features are float32)."""
  dim: int
  num_classes: int = 0
  guidance: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, time, label: Optional[jnp.ndarray] = None,
               w: Optional[jnp.ndarray] = None):
    # Time inputs are logSNRs in [-20, 20] or t in [0, 1]; scale so both span many periods.
    emb = sinusoidal(time * 50.0, self.dim)
    dense = lambda **kwargs: nn.Dense(self.dim, dtype=self.dtype, **kwargs)
    emb = dense()(emb)
    emb = dense()(nn.swish(emb))
    if self.num_classes:
      if label is None:
        label = jnp.full(time.shape, self.num_classes, jnp.int32)
      emb += nn.Embed(self.num_classes + 1, self.dim, dtype=self.dtype,
                      name="label_embedding")(label)
    if self.guidance:
      if w is None:
        w = jnp.zeros(time.shape, jnp.float32)
      h = nn.swish(dense()(sinusoidal(w * 100.0, self.dim)))
      emb += dense(kernel_init=nn.initializers.zeros, name="w_out")(h)
    return emb
