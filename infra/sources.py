"""Image data sources by name: random-access sequences of {'image', 'label'} examples.

Every source returns a `Source` whose `examples` support `len()` and `examples[i]`
(what grain's `MapDataset.source` needs) and give `{'image': uint8 (H, W, C),
'label': int}`. Nothing is ever downloaded: each source reads files the user has
prepared and raises `DatasetNotFoundError` (naming the dataset, the directory
searched and how to prepare it) when they are missing.

Registered names (`SOURCES`); any other name is read as a TFDS dataset:
- `digits`: scikit-learn's bundled 8x8 digits (1,797 images, (8, 8, 1), 10 classes),
  levels 0..16 mapped to uint8 as round(v * 255 / 16). Split by index:
  'test' = every 10th image (i % 10 == 0, 180 images), 'train' = the rest (1,617).
- `fashion_mnist`: Fashion-MNIST IDX files (raw or .gz) in `data_dir`, default
  /usr/share/datasets/fashion-mnist (Debian's `dataset-fashion-mnist`);
  'train' = 60,000 and 'test' = 10,000 images of (28, 28, 1), 10 classes.
- TFDS names (`mnist`, `cifar10`, `imagenet_resized/64x64`, ...):
  `tfds.data_source(name, split, data_dir, download=False)` over array_record
  files prepared beforehand (data_dir '' = TFDS_DATA_DIR or ~/tensorflow_datasets).
"""
import dataclasses
import gzip
import os
from typing import Any, Callable, Sequence

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX type codes (third byte of the magic number) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetNotFoundError(ValueError):
  """The prepared files of a dataset are not where the config says they are."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A random-access dataset split and what a model needs to know about it.

  examples: sequence with `len()` and `[i]` -> {'image': uint8 (H, W, C), 'label': int}.
  flippable: whether a horizontal flip keeps an image in the data distribution.
  """
  examples: Sequence[dict[str, Any]]
  image_shape: tuple[int, int, int]
  num_classes: int
  flippable: bool


class ArrayExamples:
  """Examples read lazily from an image array (N, H, W, C) (e.g. a memmap) and labels (N,)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": np.asarray(self.images[index], np.uint8), "label": int(self.labels[index])}


class TfdsExamples:
  """A TFDS data source reduced to its 'image' (uint8 (H, W, C)) and 'label' features."""

  def __init__(self, data_source: Sequence[dict[str, Any]]):
    self.data_source = data_source

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self.data_source[index]
    return {"image": np.asarray(example["image"], np.uint8), "label": int(example["label"])}


def digits_source(split: str, data_dir: str) -> Source:
  """scikit-learn's 8x8 digits: uint8 = round(v * 255 / 16); test = index % 10 == 0."""
  del data_dir  # bundled with scikit-learn
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  is_test = np.arange(len(images)) % 10 == 0
  keep = _split_entry(split, {"train": ~is_test, "test": is_test}, "digits")
  return Source(ArrayExamples(images[keep], digits.target[keep]), (8, 8, 1), 10, flippable=False)


def read_idx(path: str) -> np.ndarray:
  """An IDX array (MNIST's format): magic 0 0 <type> <ndim>, ndim big-endian uint32 dims, data.

  Raw files are memory-mapped (read lazily); .gz files are decompressed into memory.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    magic = f.read(4)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] not in _IDX_DTYPES:
      raise ValueError(f"{path} is not an IDX file (magic bytes {magic!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[magic[2]]), magic[3]
    shape = tuple(int(d) for d in np.frombuffer(f.read(4 * ndim), ">u4"))
    if path.endswith(".gz"):
      return np.frombuffer(f.read(), dtype, count=int(np.prod(shape))).reshape(shape)
  return np.memmap(path, dtype, mode="r", offset=4 + 4 * ndim, shape=shape)


def fashion_mnist_source(split: str, data_dir: str) -> Source:
  """Fashion-MNIST from the four IDX files of Zalando's release (raw or .gz)."""
  directory = data_dir or FASHION_MNIST_DIR
  prefix = _split_entry(split, {"train": "train", "test": "t10k"}, "fashion_mnist")
  images = read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
  labels = read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
  return Source(ArrayExamples(images[..., None], labels), images.shape[1:] + (1,), 10,
                flippable=True)


def _find_idx(directory: str, stem: str) -> str:
  """The path of `stem` or `stem.gz` in `directory`, else a DatasetNotFoundError."""
  for name in (stem, stem + ".gz"):
    if os.path.exists(os.path.join(directory, name)):
      return os.path.join(directory, name)
  raise DatasetNotFoundError(
      f"Dataset 'fashion_mnist': {stem}[.gz] not found in directory '{directory}'. "
      "Install the IDX files with `apt-get install dataset-fashion-mnist` (puts them in "
      f"{FASHION_MNIST_DIR}) or copy train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz there and set data.data_dir.")


def _split_entry(split: str, splits: dict[str, Any], name: str) -> Any:
  """The entry of `splits` for `split`, else a ValueError listing the valid ones."""
  if split not in splits:
    raise ValueError(f"Dataset '{name}' has no split '{split}'; choose one of {sorted(splits)}")
  return splits[split]


def tfds_source(name: str, split: str, data_dir: str) -> Source:
  """A prepared TFDS dataset read by index with `tfds.data_source` (never downloads)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    data_source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as error:
    builder = tfds.builder(name, data_dir=data_dir or None)
    if builder.is_prepared():
      raise
    raise DatasetNotFoundError(
        f"TFDS dataset '{name}' is not prepared in directory '{builder.data_path}' "
        "(nothing is downloaded at run time). Prepare it on a machine with internet with "
        f"`tfds build {name} --data_dir=DIR --file_format=array_record`, copy DIR here and "
        "set data.data_dir to it.") from error
  features = data_source.dataset_info.features
  return Source(TfdsExamples(data_source), tuple(features["image"].shape),
                features["label"].num_classes, flippable=True)


SOURCES: dict[str, Callable[[str, str], Source]] = {
    "digits": digits_source,
    "fashion_mnist": fashion_mnist_source,
}


def get_source(name: str, split: str = "train", data_dir: str = "") -> Source:
  """The `split` of dataset `name`: a registered source, else a TFDS dataset in `data_dir`."""
  if name in SOURCES:
    return SOURCES[name](split, data_dir)
  return tfds_source(name, split, data_dir)
