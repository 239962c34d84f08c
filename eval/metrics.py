"""Sample-quality metrics of a sampler, the glue a trainer or an eval script calls.

  variables = inception.load_variables()                      # converted once, see inception.py
  ref = inception_reference_stats(variables, batches, "cifar10_train_inception.npz")
  fid_is(sample_fn, 50_000, 500, rng, mesh, variables, ref)  # {'FID', 'IS', 'IS_std'}

  model, params, _ = classifier.load(classifier.default_dir("digits"))
  f = classifier.feature_fn(model, params)
  ref = reference.reference_stats(f, batches, "digits_test_classifier.npz")
  frechet_metric(sample_fn, 1_000, 100, rng, mesh, f, ref, classifier.metric_name("digits"))

`sample_fn(rng, batch_size) -> images in [-1, 1]` as in eval/generate.py.
"""
from typing import Callable

import numpy as np

from eval import frechet, generate, inception, inception_score, reference


def inception_reference_stats(variables: dict, images_iterable, cache_path: str):
  """Cached (mu, sigma) of the Inception pool features of a dataset's image batches."""
  features = inception.feature_fn(variables)
  return reference.reference_stats(lambda images: features(images).pool, images_iterable,
                                   cache_path)


def fid_is(sample_fn: Callable, num_samples: int, batch_size: int, rng, mesh, variables: dict,
           reference_stats: tuple[np.ndarray, np.ndarray], is_splits: int = 10) -> dict:
  """{'FID'} against `reference_stats`; {'IS', 'IS_std'} too when the weights have the classifier."""
  out = generate.generate(sample_fn, num_samples, batch_size, rng, mesh,
                          inception.feature_fn(variables))
  return fid_is_of(out.pool, out.logits_unbiased, reference_stats, is_splits)


def fid_is_of(pool, logits, reference_stats: tuple[np.ndarray, np.ndarray],
              is_splits: int = 10) -> dict:
  """{'FID'} of Inception pool features against `reference_stats`; {'IS', 'IS_std'} of the
  unbiased logits too when there are any (weights with the classifier)."""
  metrics = {"FID": frechet.frechet_distance(*frechet.statistics(pool), *reference_stats)}
  if logits is not None:
    metrics["IS"], metrics["IS_std"] = inception_score.inception_score(
        logits, min(is_splits, len(logits)))
  return metrics


def frechet_metric(sample_fn: Callable, num_samples: int, batch_size: int, rng, mesh,
                   feature_fn: Callable, reference_stats: tuple[np.ndarray, np.ndarray],
                   name: str) -> dict:
  """{name: Frechet distance of feature_fn(samples) to `reference_stats`} (e.g. 'FD-digits')."""
  features = generate.generate(sample_fn, num_samples, batch_size, rng, mesh, feature_fn)
  return {name: frechet.frechet_distance(*frechet.statistics(features), *reference_stats)}
