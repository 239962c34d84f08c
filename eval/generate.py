"""Draw samples (or their features) over a device mesh and bring them to the host.

`sample_fn(rng, batch_size) -> samples (batch_size, ...)` is the caller's closure over
a sampler and its parameters. Batch i uses key fold_in(rng, i), so the samples do not
depend on the number of devices (jax's partitionable threefry draws the same numbers
however an array is sharded). Extra `args` (parameters, a step count) are jit arguments,
not constants: one compiled program serves every value of them, and calls with the same
`sample_fn` object reuse it. Each batch is laid out along the mesh axis 'data': on a
multi-host mesh every host computes its own slice, an optional `transform` (e.g. the
Inception feature function) runs on the sharded batch where it lives, and
`process_allgather` assembles the full result on every host as numpy.
"""
import math
from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def generate(sample_fn: Callable, num_samples: int, batch_size: int, rng, mesh: Mesh,
             transform: Optional[Callable] = None, args: tuple = (),
             progress: Optional[Callable[[int, int], None]] = None):
  """The first `num_samples` rows of transform(sample_fn(fold_in(rng, i), batch_size, *args)),
  i = 0, 1, ...

  batch_size is global and must divide evenly over the mesh's 'data' axis. Returns a
  numpy array (or the pytree `transform` returns, with numpy leaves) on every host.
  `progress(done, total)` is called after each batch.
  """
  data_size = mesh.shape["data"]
  if batch_size % data_size:
    raise ValueError(f"batch_size={batch_size} is not divisible by the mesh's 'data' axis "
                     f"of size {data_size}.")
  sample = jax.jit(sample_fn, static_argnums=1, out_shardings=NamedSharding(mesh, P("data")))
  batches, total = [], math.ceil(num_samples / batch_size)
  for i in range(total):
    out = sample(jax.random.fold_in(rng, i), batch_size, *args)
    if transform is not None:
      out = transform(out)
    batches.append(multihost_utils.process_allgather(out, tiled=True))
    if progress is not None:
      progress(i + 1, total)
  return jax.tree.map(lambda *parts: np.concatenate(parts)[:num_samples], *batches)
