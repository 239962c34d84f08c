"""Nested dicts of arrays (Flax variables) as one flat .npz: key 'a/b/c' = tree['a']['b']['c']."""
import os

import numpy as np
from flax import traverse_util


def save_tree(path: str, tree) -> None:
  """Write `tree` (nested dicts of arrays) to `path` atomically (temp file, then rename)."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(tmp, **{key: np.asarray(value) for key, value in flat.items()})
  os.replace(tmp, path)


def load_tree(path: str) -> dict:
  """The nested dict of numpy arrays written by `save_tree`."""
  with np.load(path) as data:
    flat = {key: data[key] for key in data.files}
  return traverse_util.unflatten_dict(flat, sep="/")
