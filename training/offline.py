"""One sharded, resumable writer of offline samples (teacher pairs, trajectories, evaluations).

A generator `generate(params, rng, n) -> {key: array (n, ...)}` (pure, jittable) is run
batch by batch and its rows are written to shard files, one split at a time:

  <directory>/meta.json                   what wrote the shards (checked on every restart)
  <directory>/<split>/shard-KKKKK.npy     the rows of shard K: one structured numpy array
                                          with a field per key (e.g. noise, image, label)
  <directory>/<split>/stats/shard-KKKKK.json   seconds and generator evaluations of shard K
  <directory>/cost.json                   the one-off cost summed over every shard

Determinism: batch j of shard k of split s uses the key
`fold_in(fold_in(fold_in(PRNGKey(seed), s), k), j)`, so a shard's bytes depend only on the
seed, the generator, its params and the batch size, never on the number of hosts or on
interruptions. Host p of P writes the shards k = p (mod P) that are not present yet; each
shard is written to a temporary name and renamed (atomic on a local disk; a single-object
copy on a bucket), so a killed run leaves complete shards or none and a restart resumes
where it stopped. Each host generates on its own local devices (the batch split along
their 'data' axis); every path goes through etils.epath, so the directory may be a bucket.
The training split is 'train'; a held-out set ('heldout') is written beside it.
"""
import dataclasses
import io
import json
import time
from typing import Callable, Optional

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from infra.files import atomic_write

SPLITS = ("train", "heldout")   # split s uses fold_in(key, s)


@dataclasses.dataclass(frozen=True)
class OfflineData:
  """A method's offline training data: samples of its teacher (Method.offline_data()).

  generate: (params, rng, n) -> {key: array (n, ...)}, pure; params are what
    `--mode=pairs` loads (the teacher's EMA parameters).
  num_train, num_heldout: rows of the 'train' and 'heldout' splits.
  shard_size: rows per shard file (the last shard of a split may be shorter).
  batch_size: rows per generator call on one host (a multiple of its local devices;
    the shards depend on it, so it is part of meta.json).
  evaluations_per_example: generator network evaluations per row (for cost.json).
  seed: the base key is PRNGKey(seed).
  identity: JSON-able description of the generator (teacher workdir, sampler, steps, ...);
    a restart with a different one is an error rather than a mix of two datasets.
  """
  generate: Callable
  num_train: int
  num_heldout: int
  shard_size: int
  batch_size: int
  evaluations_per_example: float
  seed: int
  identity: dict = dataclasses.field(default_factory=dict)

  def num_examples(self, split: str) -> int:
    return {"train": self.num_train, "heldout": self.num_heldout}[split]


class OfflineDataError(ValueError):
  """Offline data that are missing, incomplete or written with other settings."""


def shard_name(k: int) -> str:
  return f"shard-{k:05d}.npy"


def num_shards(num_examples: int, shard_size: int) -> int:
  return -(-num_examples // shard_size)


def shard_rows(num_examples: int, shard_size: int, k: int) -> int:
  """Rows of shard k: shard_size, except possibly the last shard."""
  return min(shard_size, num_examples - k * shard_size)


def shard_key(seed: int, split: str, k: int):
  """The key of shard k of `split`: fold_in(fold_in(PRNGKey(seed), split index), k)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), SPLITS.index(split))
  return jax.random.fold_in(key, k)


def record_dtype(shapes: dict) -> np.dtype:
  """A structured dtype with one field per key: (name, dtype, per-row shape)."""
  return np.dtype([(k, np.dtype(v.dtype), tuple(v.shape[1:])) for k, v in sorted(shapes.items())])


def encode(rows: dict) -> bytes:
  """The .npy bytes of one structured array holding `rows` (equal leading sizes)."""
  dtype = record_dtype(rows)
  out = np.empty(len(next(iter(rows.values()))), dtype)
  for key, value in rows.items():
    out[key] = value
  buffer = io.BytesIO()
  np.save(buffer, out, allow_pickle=False)
  return buffer.getvalue()


def metadata(spec: OfflineData, shapes: dict) -> dict:
  """What identifies the shards (meta.json): sizes, seed, batch size, keys and generator."""
  return {
      "splits": {s: {"num_examples": spec.num_examples(s),
                     "num_shards": num_shards(spec.num_examples(s), spec.shard_size)}
                 for s in SPLITS},
      "shard_size": spec.shard_size, "batch_size": spec.batch_size, "seed": spec.seed,
      "keys": {k: [np.dtype(v.dtype).name, list(v.shape[1:])] for k, v in sorted(shapes.items())},
      "evaluations_per_example": spec.evaluations_per_example,
      "identity": spec.identity}


def check_or_write_metadata(directory: epath.Path, meta: dict):
  """Write meta.json, or check that the one already there is the same."""
  path = directory / "meta.json"
  text = json.dumps(meta, indent=1, sort_keys=True)
  if path.exists():
    saved = json.loads(path.read_text())
    if saved != json.loads(text):
      differ = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
      raise OfflineDataError(
          f"{directory} holds offline data written with other settings (differing: {differ}; "
          f"saved {path}). Delete that directory or point the run at another one.")
    return
  directory.mkdir(parents=True, exist_ok=True)
  atomic_write(path, text.encode(), f"p{jax.process_index()}")


def local_generator(spec: OfflineData, mesh: Mesh):
  """jit(generate) with params replicated and the rows split along the local 'data' axis."""
  return jax.jit(spec.generate, static_argnums=2,
                 in_shardings=(NamedSharding(mesh, P()), None),
                 out_shardings=NamedSharding(mesh, P("data")))


def to_local(tree, mesh: Mesh):
  """`tree` replicated on the local `mesh` (from host copies: a global array of a multi-host
  mesh is not addressable as a whole)."""
  host = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array)
                      else np.asarray(a), tree)
  return jax.device_put(host, NamedSharding(mesh, P()))


def generate_shard(generate, params, spec: OfflineData, split: str, k: int) -> dict:
  """Rows of shard k: ceil(rows / batch_size) generator calls, batch j with fold_in(key, j)."""
  rows = shard_rows(spec.num_examples(split), spec.shard_size, k)
  key = shard_key(spec.seed, split, k)
  parts = [jax.device_get(generate(params, jax.random.fold_in(key, j), spec.batch_size))
           for j in range(-(-rows // spec.batch_size))]
  return {name: np.concatenate([p[name] for p in parts])[:rows] for name in parts[0]}


class Progress:
  """A progress line (shards, rows/s, ETA) over the shards this host writes."""

  def __init__(self, total_rows: int, label: str):
    self.total, self.done, self.label, self.start = total_rows, 0, label, time.time()

  def __call__(self, rows: int, shard: str):
    self.done += rows
    elapsed = time.time() - self.start
    rate = self.done / max(elapsed, 1e-9)
    eta = (self.total - self.done) / max(rate, 1e-9)
    logging.info("%s: %s written, %d/%d rows on this host, %.1f rows/s, ETA %.0f s",
                 self.label, shard, self.done, self.total, rate, eta)


def my_missing_shards(directory: epath.Path, spec: OfflineData, split: str) -> list[int]:
  """Shards k = process_index (mod process_count) of `split` not written yet."""
  count = num_shards(spec.num_examples(split), spec.shard_size)
  mine = range(jax.process_index(), count, jax.process_count())
  return [k for k in mine if not (directory / split / shard_name(k)).exists()]


def remove_temporaries(directory: epath.Path):
  """Delete the temporary files a killed run left behind (process 0, before anyone writes)."""
  for split in SPLITS:
    if (directory / split).exists():
      for path in (directory / split).glob(".*.tmp-*"):
        path.unlink(missing_ok=True)


def write(spec: OfflineData, params, directory, label: str = "offline data",
          progress: Optional[Callable[[int, str], None]] = None) -> dict:
  """Write every missing shard this host owns, wait for all hosts, and return cost.json's
  dict (also written by process 0). `params` may live on any mesh."""
  directory = epath.Path(directory)
  mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
  if spec.batch_size % mesh.size:
    raise OfflineDataError(f"generation batch size {spec.batch_size} is not divisible by this "
                           f"host's {mesh.size} local devices.")
  params = to_local(params, mesh)
  shapes = jax.eval_shape(lambda p, r: spec.generate(p, r, spec.batch_size), params,
                          jax.random.PRNGKey(0))
  check_or_write_metadata(directory, metadata(spec, shapes))
  if jax.process_index() == 0:
    remove_temporaries(directory)
  _sync("offline: metadata checked")
  generate = local_generator(spec, mesh)
  todo = {s: my_missing_shards(directory, spec, s) for s in SPLITS}
  total = sum(shard_rows(spec.num_examples(s), spec.shard_size, k) for s in SPLITS for k in todo[s])
  progress = progress or Progress(total, label)
  for split in SPLITS:
    (directory / split / "stats").mkdir(parents=True, exist_ok=True)
    for k in todo[split]:
      start = time.time()
      rows = generate_shard(generate, params, spec, split, k)
      seconds = time.time() - start
      count = len(next(iter(rows.values())))
      atomic_write(directory / split / shard_name(k), encode(rows), f"p{jax.process_index()}")
      stats = {"rows": count, "seconds": seconds,
               "evaluations": count * spec.evaluations_per_example}
      atomic_write(directory / split / "stats" / f"{shard_name(k)[:-4]}.json",
                   json.dumps(stats).encode(), f"p{jax.process_index()}")
      progress(count, f"{split}/{shard_name(k)}")
  _sync("offline: all shards written")
  cost = summed_cost(directory, spec)
  if jax.process_index() == 0:
    atomic_write(directory / "cost.json", json.dumps(cost, indent=1).encode(), "p0")
  return cost


def summed_cost(directory: epath.Path, spec: OfflineData) -> dict:
  """Rows, generator evaluations and generation seconds summed over every shard's stats
  (seconds are those spent on the shards that were kept, across interruptions and hosts)."""
  cost = {"rows": 0, "evaluations": 0.0, "seconds": 0.0}
  for split in SPLITS:
    for k in range(num_shards(spec.num_examples(split), spec.shard_size)):
      path = directory / split / "stats" / f"{shard_name(k)[:-4]}.json"
      if path.exists():
        for key, value in json.loads(path.read_text()).items():
          cost[key] += value
  cost["evaluations_per_example"] = spec.evaluations_per_example
  cost["rows_per_second"] = cost["rows"] / max(cost["seconds"], 1e-9)
  cost["evaluations_per_second"] = cost["evaluations"] / max(cost["seconds"], 1e-9)
  return cost


def _sync(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
