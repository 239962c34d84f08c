"""model.remat: nn.remat over the residual blocks of the UNet, the NestedUNet and the diffusers
UNet leaves the parameter tree, the outputs and the gradients as they are and puts one remat
(jax.checkpoint) per residual block into the gradient's program.

Each test failed on a broken version: `rematerialised` ignoring the flag (the program test),
nn.remat over the ResBlock class instead of its method (the tree's names become
CheckpointResBlock_i), the NestedUNet's down/up path or the diffusers mid block not passed the
flag (the count of remats), the remat'd block run with train=False (the outputs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.networks import build_network, init_params
from tests.distill_fixtures import random_params

UNET = dict(name="unet", ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
            num_classes=3, dropout=0.1)
NETWORKS = {   # name -> (model section, per-example input shape)
    "unet": (UNET, (8, 8, 1)),   # down, middle and up ResBlocks at one level (fast to compile)
    "nested_unet": (dict(name="nested_unet", ch=8, ch_mult=(1, 2), num_res_blocks=1,
                         num_classes=3, dropout=0.1, inner=dict(UNET, ch_mult=(1,))),
                    ((4, 4, 1), (8, 8, 1))),
    "diffusers_unet": (dict(name="diffusers_unet", in_channels=1, out_channels=1,
                            block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                            down_block_types=("DownBlock2D",),
                            up_block_types=("UpBlock2D",), add_attention=False,
                            num_classes=3, dropout=0.1), (8, 8, 1)),
}
RESIDUAL_BLOCKS = ("ResBlock_", "resnets_")   # how the two families name their blocks
# Stated tolerance: float32 round-off. Remat recomputes the same float32 operations, but XLA
# fuses them differently (measured on CPU: at most 1.6e-7 apart, gradients of order 0.1 - 1).
RTOL, ATOL = 1e-5, 1e-6


def _network(name, remat):
  """The network `name` with model.remat = `remat` on every level (a nested inner too)."""
  model, shape = NETWORKS[name]
  model = dict(model, remat=remat)
  if "inner" in model:
    model["inner"] = dict(model["inner"], remat=remat)
  return build_network(model), shape


def _inputs(shape):
  batch = 2
  shapes = shape if isinstance(shape[0], tuple) else (shape,)
  keys = jax.random.split(jax.random.key(1), len(shapes))
  z = tuple(jax.random.normal(k, (batch,) + s) for k, s in zip(keys, shapes))
  return (z if len(z) > 1 else z[0]), jnp.array([0.5, -3.0]), jnp.array([0, 2])


def _loss(network, shape):
  """params -> a scalar of the network's training-mode outputs (dropout on, a fixed key)."""
  z, time, label = _inputs(shape)

  def loss(params):
    o = network.apply({"params": params}, z, time, label, train=True,
                      rngs={"dropout": jax.random.key(2)})
    return sum(jnp.mean(a * jnp.sin(a)) for a in jax.tree.leaves(o))
  return loss


def _residual_blocks(params) -> int:
  """The residual blocks of a parameter tree, counted by their names."""
  paths = [tuple(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  return len({path[:i + 1] for path in paths for i, key in enumerate(path)
              if key.startswith(RESIDUAL_BLOCKS)})


def _remats(jaxpr) -> int:
  """The remat (jax.checkpoint) equations of a jaxpr, at any depth."""
  count = 0
  for eqn in jaxpr.eqns:
    count += "remat" in eqn.primitive.name or "checkpoint" in eqn.primitive.name
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          count += _remats(sub)
  return count


@pytest.mark.parametrize("name", NETWORKS)
def test_parameters_are_the_same_with_remat(name):
  """Same names, shapes and initial values: a checkpoint of either loads into the other."""
  (off, shape), (on, _) = _network(name, False), _network(name, True)
  params_off = init_params(off, jax.random.key(0), shape)
  params_on = init_params(on, jax.random.key(0), shape)
  assert jax.tree.structure(params_on) == jax.tree.structure(params_off)
  for a, b in zip(jax.tree.leaves(params_on), jax.tree.leaves(params_off), strict=True):
    assert a.shape == b.shape and np.array_equal(a, b)
  assert _residual_blocks(params_off) >= 4


@pytest.mark.parametrize("name", ["unet", "diffusers_unet"])   # a NestedUNet's are ResBlocks
def test_outputs_and_gradients_are_the_same_with_remat(name):
  (off, shape), (on, _) = _network(name, False), _network(name, True)
  params = random_params(off, shape, jax.random.key(3))
  loss_off, grads_off = jax.jit(jax.value_and_grad(_loss(off, shape)))(params)
  loss_on, grads_on = jax.jit(jax.value_and_grad(_loss(on, shape)))(params)
  np.testing.assert_allclose(loss_on, loss_off, rtol=RTOL, atol=ATOL)
  for a, b in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off), strict=True):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_off)) > 0


@pytest.mark.parametrize("name", NETWORKS)
def test_remat_puts_one_checkpoint_per_residual_block_in_the_gradient(name):
  """The gradient's jaxpr holds a remat equation for each residual block with remat, none
  without."""
  (off, shape), (on, _) = _network(name, False), _network(name, True)
  params = init_params(off, jax.random.key(0), shape)
  jaxpr = lambda network: jax.make_jaxpr(jax.grad(_loss(network, shape)))(params).jaxpr
  assert _remats(jaxpr(off)) == 0
  assert _remats(jaxpr(on)) == _residual_blocks(params)
