"""Matryoshka Diffusion: the NestedUNet's nesting, the shifted per-resolution processes, the
multi-resolution loss, nested sampling, progressive growth and the trainer (resume, devices)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.networks import build_network, init_params
from diffusion.nested_unet import nested_resolutions
from tests.distill_fixtures import randomize

INNER = dict(name="unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(2,),
             num_classes=3)
NESTED = dict(name="nested_unet", ch=8, ch_mult=(1, 2), num_res_blocks=1, num_classes=3,
              inner=INNER)
TIME = jnp.array([0.3, -4.0, 11.0])
LABEL = jnp.array([0, 2, 3])


@functools.cache
def grown_network():
  """(nested, inner, params): a fresh 8x8 shell around a 4x4 UNet with non-trivial parameters."""
  nested, inner = build_network(NESTED), build_network(INNER)
  inner_params = randomize(init_params(inner, jax.random.key(1), (4, 4, 1)), jax.random.key(2))
  params = dict(init_params(nested, jax.random.key(0), ((4, 4, 1), (8, 8, 1))),
                inner=inner_params)
  return nested, inner, params


def test_fresh_shell_keeps_the_inner_outputs_bit_for_bit_and_ignores_z_hi():
  nested, inner, params = grown_network()
  assert nested_resolutions(nested, 8) == (4, 8)
  z_lo = jax.random.normal(jax.random.key(3), (3, 4, 4, 1))
  alone = inner.apply({"params": params["inner"]}, z_lo, TIME, label=LABEL)
  assert float(jnp.abs(alone).max()) > 0.1
  for k in range(3):
    z_hi = (k + 1) * jax.random.normal(jax.random.key(10 + k), (3, 8, 8, 1))
    # Op by op, the inner runs exactly the same operations as the UNet alone.
    o_lo, o_hi = nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)
    np.testing.assert_array_equal(o_lo, alone)
    assert o_hi.shape == (3, 8, 8, 1)

  def low_output(z_hi):
    return jnp.sum(nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)[0] ** 2)

  grad = jax.grad(low_output)(z_hi)
  np.testing.assert_array_equal(grad, jnp.zeros_like(grad))


def test_trained_shell_couples_the_resolutions():
  """Once the adapters are non-zero, z_hi reaches the low-resolution output and vice versa."""
  nested, _, params = grown_network()
  params = randomize(params, jax.random.key(4))
  z_lo = jax.random.normal(jax.random.key(3), (3, 4, 4, 1))
  z_hi = jax.random.normal(jax.random.key(5), (3, 8, 8, 1))
  f = lambda z_lo, z_hi: nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)
  d_lo_d_hi = jax.grad(lambda z: jnp.sum(f(z_lo, z)[0]))(z_hi)
  d_hi_d_lo = jax.grad(lambda z: jnp.sum(f(z, z_hi)[1]))(z_lo)
  assert float(jnp.abs(d_lo_d_hi).max()) > 0 and float(jnp.abs(d_hi_d_lo).max()) > 0


def test_three_levels_and_a_wrong_nesting():
  three = build_network(dict(NESTED, inner=dict(NESTED)))
  assert nested_resolutions(three, 16) == (4, 8, 16)
  shapes = ((4, 4, 1), (8, 8, 1), (16, 16, 1))
  params = init_params(three, jax.random.key(0), shapes)
  assert set(params["inner"]) >= {"inner", "in_adapter", "out_adapter"}
  z = tuple(jnp.ones((2,) + s) for s in shapes)
  outs = three.apply({"params": params}, z, TIME[:2])
  assert [o.shape for o in outs] == [(2,) + s for s in shapes]
  with pytest.raises(ValueError, match="the next lower resolution must be 8"):
    init_params(three, jax.random.key(0), ((2, 2, 1), (4, 4, 1), (16, 16, 1)))
