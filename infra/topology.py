"""TPU slices without a TPU: the abstract devices of a topology (libtpu's compile-only client)
and the public figures of each chip generation.

Peak dense bf16 FLOP/s, HBM capacity and bandwidth per chip, from Google Cloud's system
architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e):
  v4:  275 TFLOP/s, 32 GiB, 1200 GB/s      v5e: 197 TFLOP/s, 16 GiB, 819 GB/s
  v5p: 459 TFLOP/s, 95 GiB, 2765 GB/s      v6e: 918 TFLOP/s, 32 GiB, 1638 GB/s
"""
import collections
import dataclasses
import importlib.util
import os

GiB = 2**30

INSTALL = "pip install libtpu==0.0.42.1   # the libtpu that matches jax 0.10.2"


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_flops: float       # dense bf16 FLOP/s per chip
  hbm_bytes: float        # HBM per chip
  hbm_bandwidth: float    # bytes/s per chip


# Keyed by the device_kind libtpu reports.
CHIPS = {
    "TPU v4": Chip("v4", 275e12, 32 * GiB, 1200e9),
    "TPU v5 lite": Chip("v5e", 197e12, 16 * GiB, 819e9),
    "TPU v5": Chip("v5p", 459e12, 95 * GiB, 2765e9),
    "TPU v6 lite": Chip("v6e", 918e12, 32 * GiB, 1638e9),
}


class NoLibtpuError(RuntimeError):
  """libtpu, which compiles for TPUs on any machine, is not installed."""


def topology_devices(name: str) -> list:
  """The abstract devices of the TPU slice `name` (e.g. 'v5e:4x4', 'v4:2x2x2'), no TPU
  needed; a clear error without libtpu or for a name libtpu refuses."""
  if importlib.util.find_spec("libtpu") is None:
    raise NoLibtpuError(f"Planning for a TPU topology needs libtpu's compiler (no TPU needed): "
                        f"{INSTALL}")
  # Compiling needs no TPU to itself: skip libtpu's one-process lock (/tmp/libtpu_lockfile),
  # which any other jax process of this environment may hold.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except Exception as e:  # libtpu raises XlaRuntimeError for names it does not know
    raise ValueError(f"plan.topology={name!r} is not a TPU topology libtpu knows ({e}); "
                     f"use <generation>:<shape>, e.g. v5e:4x4, v4:2x2x2, v5p:2x2x1, "
                     f"v6e:2x2.") from e


def chip_of(devices) -> tuple[Chip, int]:
  """(the chip generation, devices per chip) of a topology's devices (v4's compile-only
  topology has one device per TensorCore, two per chip)."""
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise ValueError(f"No figures for {kind!r}; known: {sorted(CHIPS)}.")
  per_chip = collections.Counter(tuple(d.coords) for d in devices)
  return CHIPS[kind], max(per_chip.values())
