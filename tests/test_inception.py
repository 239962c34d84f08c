"""The FID Inception-v3 in Flax: shapes, preprocessing, the weight converter (no torch needed)."""
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh

from eval import convert_inception, generate, inception, metrics
from infra import npz_tree

# torchvision parameter names of a BasicConv2d / the fc layer, by Flax leaf name.
_TORCH_NAMES = {("params", "conv", "kernel"): "conv.weight",
                ("params", "bn", "scale"): "bn.weight",
                ("params", "bn", "bias"): "bn.bias",
                ("batch_stats", "bn", "mean"): "bn.running_mean",
                ("batch_stats", "bn", "var"): "bn.running_var",
                ("params", "fc", "kernel"): "fc.weight",
                ("params", "fc", "bias"): "fc.bias"}


def torch_layout(key, value):
  """A Flax leaf in PyTorch's layout: conv HWIO -> OIHW, dense (in, out) -> (out, in)."""
  if key[-1] == "kernel":
    return np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value.T
  return value


IMAGE = jnp.linspace(-1.0, 1.0, 64).reshape(1, 8, 8, 1)


def constant_sampler(rng, batch_size):
  del rng
  return jnp.broadcast_to(IMAGE, (batch_size, 8, 8, 1))


def one_device_mesh():
  return Mesh(np.asarray(jax.devices()[:1]), ("data",))


def random_variables(shapes, seed=0):
  """Variables of the given shapes: He-scaled kernels, batch norm an identity (mean 0, var 1)."""
  rng = np.random.default_rng(seed)

  def fill(key, leaf):
    name = key[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def forward():
  """One forward pass with random weights: batch 1, an 8x8 grey image resized inside.

  Run through `generate` on a one-device mesh, so `fid_is` below reuses the compiled network.
  """
  model = inception.InceptionV3()
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 299, 299, 3),
                                                                              jnp.float32))
  variables = random_variables(shapes)
  out = generate.generate(constant_sampler, 1, 1, jax.random.key(0), one_device_mesh(),
                          inception.feature_fn(variables))
  return out, variables


@pytest.fixture(scope="module")
def torchvision_state_dict():
  """A random state dict with torchvision Inception3 names, built from the model's shapes."""
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  state = {}
  for key, leaf in traverse_util.flatten_dict(shapes).items():
    collection, *modules, layer, name = key
    torch_name = ".".join(modules + [_TORCH_NAMES[(collection, layer, name)]])
    value = rng.standard_normal(leaf.shape).astype(np.float32)
    state[torch_name] = torch_layout(key, value)
  for key in [k for k in state if k.endswith("bn.running_var")]:
    state[key.replace("running_var", "num_batches_tracked")] = np.array(0)
  state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  return state


def test_output_shapes_and_range(forward):
  out, _ = forward
  assert out.pool.shape == (1, 2048)
  assert out.logits.shape == out.logits_unbiased.shape == (1, 1008)
  assert np.all(np.isfinite(out.pool)) and np.all(out.pool >= 0)  # mean of ReLU outputs
  assert np.std(out.pool) > 0


def test_logits_unbiased_is_pool_times_kernel(forward):
  out, variables = forward
  kernel = variables["params"]["fc"]["kernel"]
  np.testing.assert_allclose(out.logits_unbiased, out.pool @ kernel, rtol=1e-5, atol=1e-5)


def test_fid_is_of_a_constant_sampler(forward):
  """Two identical samples (covariance 0): FID to (their pool + delta, 0) is the closed form
  |delta|^2 through the whole fid_is path, and IS is 1 (p(y|x) = p(y))."""
  out, variables = forward
  delta = np.linspace(-0.5, 0.5, 2048)
  reference = (np.asarray(out.pool[0], np.float64) + delta, np.zeros((2048, 2048)))
  result = metrics.fid_is(constant_sampler, 2, 1, jax.random.key(0), one_device_mesh(), variables,
                          reference, is_splits=1)
  assert result["FID"] == pytest.approx(np.sum(delta ** 2), rel=1e-5)
  assert result["IS"] == pytest.approx(1.0, abs=1e-9)


def test_to_inception_input():
  prepare = jax.jit(inception.to_inception_input)
  grey = jnp.stack([jnp.full((16, 16, 1), 1.0), jnp.full((16, 16, 1), -1.0)])
  x = prepare(grey)
  assert x.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(x[0], (255.0 - 128.0) / 128.0, atol=1e-6)  # white: level 255
  np.testing.assert_allclose(x[1], -1.0, atol=1e-6)                     # black: level 0
  rgb = jax.random.uniform(jax.random.key(1), (1, 299, 299, 3), minval=-1.0, maxval=1.0)
  levels = jnp.round((rgb + 1.0) * 127.5)
  np.testing.assert_array_equal(prepare(rgb), (levels - 128.0) / 128.0)
  with pytest.raises(ValueError, match="1 or 3 channels"):
    inception.to_inception_input(jnp.zeros((1, 8, 8, 2)))


def test_torchvision_names_are_the_standard_ones(torchvision_state_dict):
  state = torchvision_state_dict
  assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert state["Mixed_5b.branch_pool.conv.weight"].shape == (32, 192, 1, 1)
  assert state["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert state["Mixed_7a.branch7x7x3_4.conv.weight"].shape == (192, 192, 3, 3)
  assert state["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
  assert state["fc.weight"].shape == (1008, 2048)
  assert sum(k.endswith("conv.weight") for k in state) == 94


def test_converter_round_trip(torchvision_state_dict, tmp_path):
  variables = convert_inception.torchvision_to_flax(torchvision_state_dict)
  convert_inception.check_structure(variables)
  path = str(tmp_path / "inception.npz")
  npz_tree.save_tree(path, variables)
  loaded = traverse_util.flatten_dict(inception.load_variables(path))
  assert len(loaded) == 94 * 5 + 2
  for key, value in loaded.items():
    collection, *modules, layer, name = key
    torch_name = ".".join(modules + [_TORCH_NAMES[(collection, layer, name)]])
    np.testing.assert_array_equal(torch_layout(key, value), torchvision_state_dict[torch_name])
  assert inception.build(inception.load_variables(path)).num_classes == 1008


def test_converter_rejects_unknown_and_misshaped(torchvision_state_dict):
  with pytest.raises(ValueError, match="Unexpected key"):
    convert_inception.torchvision_to_flax({"Mixed_5b.branch1x1.conv.bias": np.zeros(3)})
  state = dict(torchvision_state_dict)
  state["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  with pytest.raises(ValueError, match="wrong shape"):
    convert_inception.check_structure(convert_inception.torchvision_to_flax(state))


def test_torchscript_names():
  beta = np.arange(4, dtype=np.float32)
  renamed = convert_inception.torchscript_to_torchvision({
      "net.layers.conv_3.weight": np.ones((4, 2, 1, 1)),
      "net.layers.mixed_4.tower_1.conv_2.beta": beta,
      "net.layers.mixed_8.tower_1.conv_3.mean": beta,
      "net.layers.mixed_10.tower_1_mixed_conv_1.var": beta,
      "net.layers.mixed_3.tower.conv_2.weight": np.ones(1)})
  assert set(renamed) == {
      "Conv2d_3b_1x1.conv.weight", "Mixed_6b.branch7x7dbl_3.bn.bias",
      "Mixed_6b.branch7x7dbl_3.bn.weight", "Mixed_7a.branch7x7x3_4.bn.running_mean",
      "Mixed_7c.branch3x3dbl_3b.bn.running_var", "Mixed_6a.branch3x3dbl_3.conv.weight"}
  np.testing.assert_array_equal(renamed["Mixed_6b.branch7x7dbl_3.bn.weight"], np.ones(4))
  np.testing.assert_array_equal(renamed["Mixed_6b.branch7x7dbl_3.bn.bias"], beta)
  with pytest.raises(ValueError, match="not an FID Inception-v3 layer"):
    convert_inception.torchscript_to_torchvision({"net.layers.mixed_4.tower_3.conv.weight": beta})


def test_detect_format(tmp_path):
  scripted = tmp_path / "model.pt"
  with zipfile.ZipFile(scripted, "w") as archive:
    archive.writestr("model/code/__torch__.py", "")
  plain = tmp_path / "weights.pth"
  plain.write_bytes(b"\x80\x02legacy pickle")
  assert convert_inception.detect_format(str(scripted)) == "torchscript"
  assert convert_inception.detect_format(str(plain)) == "pytorch_fid"


def test_missing_weights_error_names_path_and_command(tmp_path):
  path = str(tmp_path / "nowhere.npz")
  with pytest.raises(FileNotFoundError, match="eval.convert_inception") as error:
    inception.load_variables(path)
  assert path in str(error.value)
