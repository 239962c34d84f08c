"""Offline data (training/offline.py's shards) read back through grain, like the image sources.

`ShardedExamples(directory, split)` is a random-access sequence over the split's shards:
examples[i] -> {key: numpy array} with the generator's keys and dtypes (float `noise` and
`image` and int `label` for Denoising Student pairs; whatever else a generator writes).
Local shards are memory-mapped; shards on a bucket are read row by row (a seek and one
small read per row). A split with missing shards, or a directory without meta.json, is an
`OfflineDataError` whose message holds the command that makes them.

`make_train_iterator` shards the rows by process (rows p, p + P, ... as
training.data.process_shard), shuffles them every epoch with the run's seed, batches and
returns a grain iterator whose position goes into the checkpoint (bit-exact resume);
`make_eval_iterator` is one ordered pass.
"""
import json
from typing import Any, Mapping

import grain
import numpy as np
from etils import epath

from training import data
from training.offline import OfflineDataError, num_shards, shard_name


class ShardFile:
  """Rows of one .npy shard of a structured dtype: memory-mapped if local, else seek + read."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.local = "://" not in str(path)
    if self.local:
      self.array = np.load(str(path), mmap_mode="r", allow_pickle=False)
      self.dtype, self.rows = self.array.dtype, len(self.array)
    else:
      with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        shape, _, self.dtype = np.lib.format._read_array_header(f, version)  # pylint: disable=protected-access
        self.offset = f.tell()
      self.rows = shape[0]

  def __getitem__(self, j: int) -> np.void:
    if self.local:
      return self.array[j]
    with self.path.open("rb") as f:
      f.seek(self.offset + j * self.dtype.itemsize)
      return np.frombuffer(f.read(self.dtype.itemsize), self.dtype)[0]


def missing_message(directory, split: str, detail: str, command: str) -> str:
  return (f"No complete '{split}' offline data in {directory} ({detail}). Make them with "
          f"`{command}` (resumable: rerun it after an interruption; on a pod run it on every "
          f"host) before training.")


class ShardedExamples:
  """The rows of a complete split: len() and [i] -> {key: np.ndarray} (grain's source)."""

  def __init__(self, directory, split: str, command: str = "python main.py --mode=pairs ..."):
    self.directory = epath.Path(directory)
    meta_path = self.directory / "meta.json"
    if not meta_path.exists():
      raise OfflineDataError(missing_message(self.directory, split, "no meta.json", command))
    self.meta = json.loads(meta_path.read_text())
    info = self.meta["splits"][split]
    self.shard_size, self.num_examples = self.meta["shard_size"], info["num_examples"]
    paths = [self.directory / split / shard_name(k)
             for k in range(num_shards(self.num_examples, self.shard_size))]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
      raise OfflineDataError(missing_message(
          self.directory, split, f"{len(missing)} of {len(paths)} shards missing, e.g. "
          f"{missing[0]}", command))
    self.paths, self._files = paths, {}

  def __len__(self) -> int:
    return self.num_examples

  def _file(self, k: int) -> ShardFile:
    if k not in self._files:
      self._files[k] = ShardFile(self.paths[k])
    return self._files[k]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    k, j = divmod(int(index), self.shard_size)
    row = self._file(k)[j]
    return {name: np.array(row[name]) for name in row.dtype.names}

  def __getstate__(self):   # grain worker processes reopen the files
    return dict(self.__dict__, _files={})


def make_train_iterator(directory, data_config: Mapping[str, Any], global_batch_size: int,
                        seed: int, command: str) -> grain.DatasetIterator:
  """This process's endless stream of shuffled local batches of the 'train' split."""
  examples = ShardedExamples(directory, "train", command)
  dataset = data.process_shard(examples).seed(seed).shuffle().repeat()
  return iter(data._read(dataset, data_config,  # pylint: disable=protected-access
                         data.local_batch_size(global_batch_size), drop_remainder=True))


def make_eval_iterator(directory, data_config: Mapping[str, Any], global_batch_size: int,
                       command: str, split: str = "heldout") -> grain.DatasetIterator:
  """One ordered pass over this process's rows of `split` in full local batches (a remainder
  smaller than the global batch is left out, so every batch shards evenly)."""
  examples = ShardedExamples(directory, split, command)
  return iter(data._read(data.process_shard(examples), data_config,  # pylint: disable=protected-access
                         data.local_batch_size(global_batch_size), drop_remainder=True))
