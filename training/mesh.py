"""Device mesh and shardings: the batch is split along 'data', parameters are replicated.

Multi-host: each process holds its own slice of the global batch; global arrays
are assembled with `jax.make_array_from_process_local_data`.
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
