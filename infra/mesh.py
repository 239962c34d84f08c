"""Device mesh and shardings: the batch is split over the whole mesh, the state is replicated or
sharded along 'fsdp'.

The mesh is ('data',) over every device, or with `fsdp` > 1 ('data', 'fsdp') of shape
(devices / fsdp, fsdp): the batch is split over both axes, and each large leaf of the train
state (parameters, EMA, Adam moments, the frozen teacher) is split along 'fsdp' on its largest
dimension that fsdp divides (ZeRO-3 / FSDP; XLA gathers a weight where it is used and
reduce-scatters its gradient). Leaves under `min_size` elements stay replicated.

Multi-host: each process holds its own slice of the global batch; global arrays
are assembled with `jax.make_array_from_process_local_data`. Code traced under
`jax.set_mesh(mesh)` may lay arrays it creates (the noise of a sampler) along the batch
axes with `constrain_batch`.
"""
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

FSDP = "fsdp"


def make_mesh(num_devices: Optional[int] = None, fsdp: int = 1,
              devices: Optional[Sequence] = None) -> Mesh:
  """A ('data',) mesh over `devices` (default: all devices of all hosts, or the first
  `num_devices`); with fsdp > 1 a ('data', 'fsdp') mesh of shape (n / fsdp, fsdp)."""
  devices = list(jax.devices() if devices is None else devices)[:num_devices]
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices.")
  if fsdp == 1:
    return Mesh(np.asarray(devices), ("data",))
  return Mesh(np.asarray(devices).reshape(-1, fsdp), ("data", FSDP))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _batch_axes(mesh) -> tuple:
  return tuple(mesh.axis_names)


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Examples split over every device: along 'data' (and 'fsdp')."""
  return NamedSharding(mesh, P(_batch_axes(mesh)))


def fsdp_spec(shape, fsdp: int, min_size: int) -> P:
  """The spec of one state leaf: its largest dimension that `fsdp` divides along 'fsdp' (the
  first such when two are equal), or replicated when fsdp is 1, the leaf has fewer than
  `min_size` elements, or no dimension divides."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  divisible = [i for i, n in enumerate(shape) if n % fsdp == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda i: (shape[i], -i))
  return P(*[FSDP if i == axis else None for i in range(len(shape))])


def state_shardings(mesh: Mesh, shapes, min_size: int):
  """NamedShardings for a pytree of arrays / ShapeDtypeStructs by the fsdp rule
  (`fsdp_spec`); all replicated on a mesh without an 'fsdp' axis."""
  fsdp = dict(mesh.shape).get(FSDP, 1)
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)),
                      shapes)


def with_shardings(shapes, shardings):
  """`shapes` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs laid out as `shardings`
  (one sharding for every leaf, or a pytree of them like `shapes`)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, shapes)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def constrain_batch(x):
  """`x` laid out along its first axis over the batch axes of the mesh set by `jax.set_mesh`
  (so everything computed from it is split over the devices); unchanged outside such a mesh
  or when the batch does not split evenly."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names or x.shape[0] % mesh.size:
    return x
  return jax.lax.with_sharding_constraint(x, P(_batch_axes(mesh)))


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
