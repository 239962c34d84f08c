"""Device mesh and shardings: the batch is split along 'data', parameters are replicated.

Multi-host: each process holds its own slice of the global batch; global arrays
are assembled with `jax.make_array_from_process_local_data`. Code traced under
`jax.set_mesh(mesh)` may lay arrays it creates (the noise of a sampler) along 'data'
with `constrain_batch`.
"""
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
  """A 1-D mesh over all devices of all hosts (or the first `num_devices`)."""
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def constrain_batch(x):
  """`x` laid out along its first axis over the 'data' axis of the mesh set by
  `jax.set_mesh` (so everything computed from it is split over the devices); unchanged
  outside such a mesh or when the batch does not split evenly."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names or x.shape[0] % mesh.shape["data"]:
    return x
  return jax.lax.with_sharding_constraint(x, P("data"))


def shard_batch(mesh: Mesh, local_batch):
  """Assemble this process's slice of a batch (pytree of numpy arrays) into global arrays."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def check_batch_size(mesh: Mesh, global_batch_size: int):
  """The global batch must split evenly over the devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f"batch_size={global_batch_size} is not divisible by the "
                     f"{mesh.size} devices of the mesh.")
