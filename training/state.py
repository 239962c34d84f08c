"""The train state: everything a bit-exact resume needs, as one pytree."""
from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # global optimizer step (int32)
  stage_index: jax.Array   # index into the method's stages (int32)
  params: Any              # trained parameters (the student)
  ema_params: Any          # exponential moving average of params
  opt_state: Any           # optax state (restarts at every stage)
  frozen: Any              # what the loss sees but does not train (the teacher)
  rng: jax.Array           # base PRNG key; step k uses fold_in(rng, k)
  target_params: Any = None   # a second EMA of params (the method's target_ema_decay), or None
