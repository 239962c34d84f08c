"""A diffusers UNet2DModel state dict (name -> numpy array) as the DiffusersUNet's params.

A torch key `down_blocks.0.resnets.1.conv1.weight` is the Linen path
(down_blocks_0, resnets_1, conv1) and its leaf: `bias` -> bias; `weight` -> a conv kernel
(O, I, kh, kw) -> (kh, kw, I, O), a linear kernel (O, I) -> (I, O), a GroupNorm `scale` or an
Embedding table as it is. The deprecated attention names (query, key, value, proj_attn) of
older checkpoints are read as to_q, to_k, to_v, to_out.0.
"""
import re

import jax
import numpy as np

DEPRECATED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class WeightMappingError(ValueError):
  """A state dict that does not fit the network built from its config.json."""


def module_path(key: str) -> tuple[tuple[str, ...], str]:
  """(Linen module path, torch leaf name) of a state-dict key: `a.0.b.weight` ->
  (('a_0', 'b'), 'weight')."""
  *modules, leaf = key.split(".")
  modules = ".".join(DEPRECATED.get(m, m) for m in modules)
  return tuple(re.sub(r"\.(\d+)", r"_\1", modules).split(".")), leaf


def convert(tensor: np.ndarray, leaf: str, module: dict) -> tuple[str, np.ndarray]:
  """(Linen leaf name, array) for torch leaf `leaf` of a module whose Linen leaves are `module`."""
  if leaf == "bias":
    return "bias", tensor
  if leaf != "weight":
    raise KeyError(leaf)
  if "kernel" in module:
    axes = (2, 3, 1, 0) if tensor.ndim == 4 else (1, 0)
    return "kernel", np.transpose(tensor, axes[:tensor.ndim])
  return ("scale" if "scale" in module else "embedding"), tensor


def params_from_state_dict(tensors: dict, like) -> dict:
  """The params tree shaped like `like` (the network's own, e.g. from jax.eval_shape) filled
  from `tensors`; a WeightMappingError names the first tensor with no place in the network,
  a shape mismatch (tensor, both shapes), or the parameters no tensor filled."""
  filled = {}
  for key in sorted(tensors):
    path, leaf = module_path(key)
    module = like
    for name in path:
      module = module.get(name) if isinstance(module, dict) else None
    try:
      name, array = convert(np.asarray(tensors[key], np.float32), leaf, module or {})
      want = module[name].shape
    except (KeyError, TypeError):
      raise WeightMappingError(
          f"tensor {key!r} {tuple(tensors[key].shape)} has no place in the UNet2DModel that "
          f"config.json describes: the config does not match the weights (or the checkpoint "
          f"has a layer this import does not implement).") from None
    if array.shape != tuple(want):
      raise WeightMappingError(
          f"shape mismatch: tensor {key!r} has shape {tuple(tensors[key].shape)}, which as "
          f"{'/'.join(path + (name,))} is {array.shape}, but the network that config.json "
          f"describes has {tuple(want)} there: the config does not match the weights.")
    filled[path + (name,)] = array
  flat = {tuple(k.key for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(like)}
  missing = sorted("/".join(p) for p in set(flat) - set(filled))
  if missing:
    raise WeightMappingError(f"no tensor for the parameters {missing[:8]} ({len(missing)} in "
                             f"all): the checkpoint lacks weights the config.json network has.")
  return unflatten(filled)


def unflatten(flat: dict) -> dict:
  """{('a', 'b'): x} -> {'a': {'b': x}}."""
  tree = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree
