"""The feature networks behind the quality metrics and their cached reference statistics.

FD-<dataset>: penultimate features of the dataset classifier (eval/classifier.py). When the
classifier directory (default `classifier.default_dir(dataset)`) holds none, one is trained on
the dataset's train split with `classifier.train_classifier` and saved there, with a warning
(digits, 500 steps: about 30 s on 2 CPU cores). The reference statistics are those of the
`split` images (default 'train', the convention of published CIFAR-10 / ImageNet FIDs;
`eval.reference_split` changes it), or of its first N (`eval.reference_images`), cached as
<classifier dir>/<split>[N]_stats.npz next to the classifier they belong to.

FID / IS: the FID Inception-v3 (eval/inception.py) from a local weights file, whose
reference statistics are cached as <weights dir>/<dataset>_<split>[N]_inception.npz.
Directories may be buckets (any etils.epath path).
"""
from typing import Callable, Iterator, NamedTuple

import jax
import numpy as np
from absl import logging
from etils import epath

from eval import classifier, inception, reference


class Features(NamedTuple):
  """A feature function images in [-1, 1] -> features, the reference (mu, sigma), and the
  dataset split and number of images the reference is of."""
  fn: Callable
  reference: tuple[np.ndarray, np.ndarray]
  split: str
  count: int


def batches(images, batch_size: int) -> Iterator[np.ndarray]:
  """Consecutive slices of at most `batch_size` images."""
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size]


def dataset_classifier(dataset: str, directory: str = "", steps: int = 500, data_dir: str = ""):
  """(model, params, directory) of the dataset classifier, trained and saved first if missing."""
  directory = directory or classifier.default_dir(dataset)
  if not (epath.Path(directory) / "config.json").exists():
    logging.warning("No %s classifier in %s: training one for %s (%d steps).",
                    dataset, directory, classifier.metric_name(dataset), steps)
    images, labels, num_classes = classifier.load_split(dataset, "train", data_dir)
    model, params = classifier.train_classifier(images, labels, num_classes, steps)
    test_images, test_labels, _ = classifier.load_split(dataset, "test", data_dir)
    accuracy = classifier.accuracy(model, params, test_images, test_labels)
    if jax.process_index() == 0:
      classifier.save(directory, model, params, dataset=dataset, test_accuracy=accuracy,
                      steps=steps, metric=classifier.metric_name(dataset))
    logging.warning("Trained the %s classifier (test accuracy %.4f) and saved it to %s.",
                    dataset, accuracy, directory)
    return model, params, directory
  model, params, config = classifier.load(directory)
  if config.get("dataset", dataset) != dataset:
    raise ValueError(f"The classifier in {directory} is for {config['dataset']!r}, not "
                     f"{dataset!r}: pass the classifier directory of {dataset!r}.")
  return model, params, directory


def reference_images(dataset: str, data_dir: str, split: str, count: int):
  """The first `count` images of the split (all of them when 0) and the statistics cache's
  name stem: '<split>' or '<split><count>'."""
  images, _, _ = classifier.load_split(dataset, split, data_dir)
  if count and count < len(images):
    return images[:count], f"{split}{count}"
  return images, split


def classifier_features(dataset: str, directory: str = "", steps: int = 500,
                        data_dir: str = "", split: str = "train", count: int = 0,
                        batch_size: int = 500) -> Features:
  """The classifier's feature function and the cached statistics of the first `count` `split`
  images (0 = all)."""
  model, params, directory = dataset_classifier(dataset, directory, steps, data_dir)
  fn = classifier.feature_fn(model, params)
  images, stem = reference_images(dataset, data_dir, split, count)
  stats = reference.reference_stats(fn, batches(images, batch_size),
                                    epath.Path(directory) / f"{stem}_stats.npz")
  return Features(fn, stats, split, len(images))


def inception_features(dataset: str, weights: str = "", data_dir: str = "", split: str = "train",
                       count: int = 0, batch_size: int = 100) -> Features:
  """Inception's feature function (-> InceptionOutput) and the cached pool statistics of the
  first `count` `split` images (0 = all); a missing weights file is an error that gives the
  conversion command (inception.load_variables)."""
  weights = weights or inception.DEFAULT_WEIGHTS
  fn = inception.feature_fn(inception.load_variables(weights))
  images, stem = reference_images(dataset, data_dir, split, count)
  cache = epath.Path(weights).parent / f"{dataset.replace('/', '_')}_{stem}_inception.npz"
  stats = reference.reference_stats(lambda x: fn(x).pool, batches(images, batch_size), cache)
  return Features(fn, stats, split, len(images))
