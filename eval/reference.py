"""Reference statistics (mu, sigma) of a dataset's features, computed once and cached as .npz.

The images come from any iterable of numpy batches in [-1, 1], (B, H, W, C) (e.g.
`b['image'] for b in training.data.make_eval_iterator(...)`); `feature_fn` maps a batch
to features (B, D). Any preprocessing (for Inception: tile grey to RGB, resize to
299x299) belongs inside `feature_fn`, so the reference and the samples are featurised
by the very same function. Name the cache after the dataset, split and feature network.

Multi-host: statistics are of the batches this process iterates over, so pass every
process the whole split (not a per-process shard) or compute the cache on one process
first; writes are atomic, so processes writing the same cache do not corrupt it.
"""
from typing import Callable, Iterable

import numpy as np
from etils import epath

from eval import frechet


def dataset_stats(feature_fn: Callable, images_iterable: Iterable) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of feature_fn over all batches, merged batch by batch in float64."""
  total = frechet.Moments(0, None, None)
  for images in images_iterable:
    total = frechet.merge(total, frechet.moments(np.asarray(feature_fn(images))))
  return frechet.mean_cov(total)


def reference_stats(feature_fn: Callable, images_iterable: Iterable,
                    cache_path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) loaded from `cache_path` if it exists, else computed and saved there."""
  if epath.Path(cache_path).exists():
    return frechet.load_stats(cache_path)
  mu, sigma = dataset_stats(feature_fn, images_iterable)
  frechet.save_stats(cache_path, mu, sigma)
  return mu, sigma
