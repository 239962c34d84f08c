"""Arrays as .npz files at any etils.epath path (a local file or a bucket object), and nested
dicts of arrays (Flax variables) as one flat .npz: key 'a/b/c' = tree['a']['b']['c']."""
import os

import numpy as np
from etils import epath
from flax import traverse_util


def write_npz(path, **arrays) -> None:
  """Write `arrays` to the .npz `path` atomically (a temporary name, then a rename)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
  with tmp.open("wb") as f:
    np.savez(f, **arrays)
  tmp.replace(path)


def read_npz(path) -> dict:
  """{name: array} of the .npz `path`."""
  with epath.Path(path).open("rb") as f, np.load(f) as data:
    return {key: data[key] for key in data.files}


def save_tree(path, tree) -> None:
  """Write `tree` (nested dicts of arrays) to `path` atomically."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  write_npz(path, **{key: np.asarray(value) for key, value in flat.items()})


def load_tree(path) -> dict:
  """The nested dict of numpy arrays written by `save_tree`."""
  return traverse_util.unflatten_dict(read_npz(path), sep="/")
