"""A small CNN classifier of a dataset, whose penultimate features give an offline quality metric.

The Frechet distance of these features (eval/frechet.py) is named after the dataset,
`metric_name('digits') == 'FD-digits'`, never "FID": it is comparable only between
runs that use the same trained classifier. Images are in [-1, 1], (B, H, W, C), as the
data pipeline yields them (uint8 / 127.5 - 1); splits are the data pipeline's
(infra.sources), so reference statistics of the 'test' split use unseen images.

Saved under a directory (default ~/.cache/diffusion_distillation_jax/classifiers/<dataset>,
or <root>/classifiers/<dataset>): params.npz (flat Flax params) and config.json (architecture,
dataset, test accuracy). Train one with `python -m eval.train_classifier --dataset=digits`.
"""
import json
import os
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from infra import npz_tree
from infra import sources

CACHE_DIR = os.path.expanduser("~/.cache/diffusion_distillation_jax")


class Classifier(nn.Module):
  """conv(w) -> conv(2w, stride 2) -> conv(4w, stride 2) -> spatial mean -> dense(features)
  -> dense(classes), ReLU after each hidden layer.

  Returns (features, logits); the features (post-ReLU, (B, features)) feed the FD metric.
  """
  num_classes: int = 10
  width: int = 32
  features: int = 128

  @nn.compact
  def __call__(self, x):
    for i, strides in enumerate((1, 2, 2)):
      x = nn.relu(nn.Conv(self.width * 2 ** i, (3, 3), strides)(x))
    features = nn.relu(nn.Dense(self.features)(jnp.mean(x, axis=(1, 2))))
    return features, nn.Dense(self.num_classes)(features)


def metric_name(dataset: str) -> str:
  return f"FD-{dataset}"


def default_dir(dataset: str, root: Optional[str] = None) -> str:
  """<root or ~/.cache/diffusion_distillation_jax>/classifiers/<dataset>."""
  return os.path.join(root or CACHE_DIR, "classifiers", dataset)


def load_split(dataset: str, split: str, data_dir: str = "") -> tuple[np.ndarray, np.ndarray, int]:
  """(images float32 (N, H, W, C) = uint8 / 127.5 - 1, labels int32 (N,), number of classes)."""
  source = sources.get_source(dataset, split, data_dir)
  examples = source.examples
  images = np.stack([examples[i]["image"] for i in range(len(examples))])
  labels = np.asarray([examples[i]["label"] for i in range(len(examples))], np.int32)
  images = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  return images, labels, source.num_classes


def train_classifier(images, labels, num_classes: int = 10, steps: int = 500,
                     batch_size: int = 128, learning_rate: float = 2e-3, seed: int = 0,
                     model: Optional[Classifier] = None):
  """Adam with cosine decay on softmax cross-entropy, batches drawn uniformly with replacement.

  Returns (model, params).
  """
  model = model or Classifier(num_classes)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  key = jax.random.key(seed)
  params = model.init(key, images[:1])["params"]
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

  @jax.jit
  def step(params, opt_state, key):
    index = jax.random.randint(key, (batch_size,), 0, len(labels))

    def loss_fn(params):
      _, logits = model.apply({"params": params}, images[index])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[index]).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for i in range(steps):
    params, opt_state = step(params, opt_state, jax.random.fold_in(key, i))
  return model, params


def apply_fn(model: Classifier, params, batch_size: int = 1000):
  """A function images (N, H, W, C) -> (features, logits) as numpy, in jitted batches."""
  apply = jax.jit(lambda images: model.apply({"params": params}, images))

  def run(images):
    parts = [apply(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return tuple(np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(2))

  return run


def accuracy(model: Classifier, params, images, labels) -> float:
  _, logits = apply_fn(model, params)(images)
  return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def save(directory: str, model: Classifier, params, **info) -> None:
  """params.npz and config.json (the architecture plus `info`, e.g. dataset, accuracy); the
  directory may be a bucket (any etils.epath path)."""
  directory = epath.Path(directory)
  npz_tree.save_tree(directory / "params.npz", jax.device_get(params))
  config = {"num_classes": model.num_classes, "width": model.width,
            "features": model.features, **info}
  (directory / "config.json").write_text(json.dumps(config, indent=2))


def load(directory: str) -> tuple[Classifier, dict, dict]:
  """(model, params, config) saved by `save`; a clear error naming the training command."""
  config_path = epath.Path(directory) / "config.json"
  if not config_path.exists():
    raise FileNotFoundError(
        f"No trained classifier in '{directory}'. Train one with\n"
        f"  python -m eval.train_classifier --dataset=<digits|fashion_mnist> --out={directory}")
  config = json.loads(config_path.read_text())
  model = Classifier(config["num_classes"], config["width"], config["features"])
  return model, npz_tree.load_tree(epath.Path(directory) / "params.npz"), config


def feature_fn(model: Classifier, params):
  """A jitted f(images in [-1, 1]) -> penultimate features (B, features); sharded on sharded inputs."""
  apply = jax.jit(lambda params, images: model.apply({"params": params}, images)[0])
  return lambda images: apply(params, images)
