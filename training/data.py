"""Input pipelines: grain datasets over a named source, sharded by JAX process.

The `data` config section (ml_collections ConfigDict; any mapping works):
  name          dataset name: 'digits', 'fashion_mnist' or any TFDS name
                ('mnist', 'cifar10', 'imagenet_resized/64x64', ...), see sources.py.
  data_dir      where the prepared files are; '' = the source's default.
  split         training split, default 'train'.
  random_flip   random horizontal flips (default False; refused for 'digits').
  read_threads  grain read threads per process (default 2; 0 = read in the caller's thread).
  num_workers   grain worker processes (default 0 = in-process). Workers need absl flags
                parsed (`absl.app.run`) and a `__main__` guard; the batch order depends on
                num_workers, so keep it fixed across a resumed run.
  image_size    optional; must equal the source's height and width (nothing is resized).

Batches are dicts of numpy arrays: 'image' float32 (B_local, H, W, C) = uint8 / 127.5 - 1
in [-1, 1], 'label' int32 (B_local,), where B_local = global_batch_size / process_count.
Process p reads examples p, p + P, p + 2P, ... of the split (P = jax.process_count()).

Checkpointing: the training iterator is a grain `DatasetIterator`; `iterator_state` /
`restore_iterator` give and set its position (a small JSON-able dict). With orbax, save
it per process through grain's handler:
  mngr.save(step, args=ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it)))
  mngr.restore(step, args=ocp.args.Composite(..., data=grain.checkpoint.CheckpointRestore(it)))
"""
from typing import Any, Mapping

import grain
import jax
import numpy as np

from infra import sources

DEFAULTS = {"data_dir": "", "split": "train", "random_flip": False, "read_threads": 2,
            "num_workers": 0, "image_size": None}


def _get(config: Mapping[str, Any], key: str) -> Any:
  """config[key] if present, else DEFAULTS[key] (ConfigDicts and dicts alike)."""
  return config[key] if key in config else DEFAULTS[key]


def load_source(config: Mapping[str, Any], split: str) -> sources.Source:
  """The `split` of the configured dataset, checked against `image_size` and `random_flip`."""
  source = sources.get_source(config["name"], split, _get(config, "data_dir"))
  image_size = _get(config, "image_size")
  if image_size is not None and tuple(source.image_shape[:2]) != (image_size, image_size):
    raise ValueError(f"data.image_size={image_size} but '{config['name']}' images are "
                     f"{source.image_shape[:2]}; this pipeline does not resize")
  if _get(config, "random_flip") and not source.flippable:
    raise ValueError(f"data.random_flip=True but '{config['name']}' images must not be flipped")
  return source


def dataset_info(config: Mapping[str, Any]) -> tuple[tuple[int, int, int], int, int]:
  """(image shape (H, W, C), number of classes, number of examples in the training split)."""
  source = load_source(config, _get(config, "split"))
  return source.image_shape, source.num_classes, len(source.examples)


def local_batch_size(global_batch_size: int) -> int:
  """global_batch_size / jax.process_count(); an error unless it divides evenly."""
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{count} processes")
  return global_batch_size // count


def process_shard(examples) -> grain.MapDataset:
  """This process's examples: indices process_index, process_index + P, ... (P processes)."""
  return grain.MapDataset.source(examples)[jax.process_index()::jax.process_count()]


def to_model_inputs(example: dict[str, Any]) -> dict[str, np.ndarray]:
  """image float32 = uint8 / 127.5 - 1 (in [-1, 1]); label int32."""
  return {"image": example["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0),
          "label": np.int32(example["label"])}


def random_flip(example: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
  """Mirror the image along its width with probability 1/2."""
  if rng.random() < 0.5:
    return {**example, "image": example["image"][:, ::-1]}
  return example


def _read(dataset: grain.MapDataset, config: Mapping[str, Any], batch_size: int,
          drop_remainder: bool) -> grain.IterDataset:
  """Threaded reads, batching and optional worker processes after the index-level steps."""
  read_threads = _get(config, "read_threads")
  options = grain.ReadOptions(num_threads=read_threads,
                              prefetch_buffer_size=2 * batch_size if read_threads else 0)
  dataset = dataset.to_iter_dataset(options).batch(batch_size, drop_remainder=drop_remainder)
  num_workers = _get(config, "num_workers")
  if num_workers:
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return dataset


def make_train_dataset(config: Mapping[str, Any], global_batch_size: int,
                       seed: int) -> grain.IterDataset:
  """This process's endless stream of shuffled (reshuffled every epoch) local batches."""
  batch_size = local_batch_size(global_batch_size)
  source = load_source(config, _get(config, "split"))
  dataset = process_shard(source.examples).seed(seed).shuffle().repeat()
  if _get(config, "random_flip"):
    dataset = dataset.random_map(random_flip)
  return _read(dataset.map(to_model_inputs), config, batch_size, drop_remainder=True)


def make_train_iterator(config: Mapping[str, Any], global_batch_size: int,
                        seed: int) -> grain.DatasetIterator:
  """An iterator over `make_train_dataset`; its position is `iterator_state(it)`."""
  return iter(make_train_dataset(config, global_batch_size, seed))


def make_index_iterator(global_batch_size: int) -> grain.DatasetIterator:
  """For data-free methods: batches {'index': int32 (B_local,)} of the global example counter
  (batch k holds k B, ..., k B + B - 1; process p its rows p, p + P, ...). No dataset is
  opened; the position is checkpointed like a dataset iterator's."""
  batch_size = local_batch_size(global_batch_size)
  indices = grain.MapDataset.range(2**31 - 1)[jax.process_index()::jax.process_count()]
  dataset = indices.map(lambda i: {"index": np.int32(i)})
  return iter(dataset.to_iter_dataset().batch(batch_size, drop_remainder=True))


def make_eval_iterator(config: Mapping[str, Any], batch_size: int,
                       split: str = "test") -> grain.DatasetIterator:
  """One pass, in order, over this process's shard of `split`; the last batch may be short.

  batch_size is global (divided by the process count), like make_train_iterator's.
  """
  source = load_source(config, split)
  dataset = process_shard(source.examples).map(to_model_inputs)
  return iter(_read(dataset, config, local_batch_size(batch_size), drop_remainder=False))


def iterator_state(iterator: grain.DatasetIterator) -> dict[str, Any]:
  """The iterator's position (JSON-able); `restore_iterator` resumes from it exactly."""
  return iterator.get_state()


def restore_iterator(iterator: grain.DatasetIterator, state: dict[str, Any]) -> None:
  """Move `iterator` (built from the same config, batch size and seed) to `state`."""
  iterator.set_state(state)
