"""Mixed precision (model.dtype): bfloat16 compute with float32 parameters, optimizer state
and loss, close to the float32 run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.teacher import get_config as teacher_config
from infra.mesh import make_mesh, shard_batch
from tests.distill_fixtures import normal_tree
from tests.tiny_config import tiny_teacher_config
from training.method import get_method
from training.trainer import Trainer

# Stated tolerance: the bfloat16 loss is within 1% of the float32 loss (measured: 5e-5 for the
# MLP, 4e-4 for the digits UNet), and the gradients point the same way (cosine > 0.99).
LOSS_RTOL = 1e-2


def small_unet_config(dtype):
  config = teacher_config("digits")
  config.model.update(ch=8, dtype=dtype)
  return config


def mlp_config(dtype):
  return tiny_teacher_config(**{"model.dtype": dtype})


def loss_and_grad(config):
  """The teacher loss and its gradient at fixed, perturbed parameters (so the zero-initialised
  output layers act) on a fixed batch."""
  method = get_method(config)
  params = method.init(jax.random.key(0))
  params = jax.tree.map(lambda a, n: jnp.asarray(np.asarray(a) + 0.05 * n), params,
                        normal_tree(params, jax.random.key(1)))
  x = jax.random.uniform(jax.random.key(2), (32, 8, 8, 1), minval=-1.0, maxval=1.0)
  fn = jax.value_and_grad(lambda p: method.loss(p, {}, {"image": x}, jax.random.key(3), {}),
                          has_aux=True)
  (loss, _), grads = jax.jit(fn)(params)
  return params, loss, grads


@pytest.mark.parametrize("make_config", [mlp_config, small_unet_config], ids=["mlp", "unet"])
def test_bfloat16_loss_and_gradient_close_to_float32(make_config):
  params, loss32, grads32 = loss_and_grad(make_config("float32"))
  params16, loss16, grads16 = loss_and_grad(make_config("bfloat16"))
  for tree in (params16, grads16):
    assert {a.dtype for a in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
  assert loss16.dtype == jnp.float32 and np.isfinite(float(loss16))
  relative = abs(float(loss16) - float(loss32)) / float(loss32)
  assert 0.0 < relative < LOSS_RTOL, relative      # > 0: the compute really is bfloat16
  flat = lambda g: jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])
  g16, g32 = flat(grads16), flat(grads32)
  cosine = float(g16 @ g32 / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32)))
  assert cosine > 0.99, cosine


def test_bfloat16_network_outputs_float32():
  method = get_method(small_unet_config("bfloat16"))
  params = jax.eval_shape(method.init, jax.random.key(0))
  pred = jax.eval_shape(lambda p, z: method.denoise(p, z, 0.5), params, jnp.ones((2, 8, 8, 1)))
  assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert pred.x.dtype == jnp.float32 and pred.eps.dtype == jnp.float32


def test_bfloat16_trainer_steps_keep_float32_state(tmp_path):
  """Two trainer steps with model.dtype='bfloat16': params, EMA and Adam moments stay float32,
  the losses are finite and within LOSS_RTOL of the float32 trainer's on the same batches."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    trainer = Trainer(mlp_config(dtype), str(tmp_path / dtype), make_mesh(8))
    state, losses[dtype] = trainer.state, []
    for _ in range(2):
      state, metrics = trainer.step_fn(state, shard_batch(trainer.mesh, next(trainer.data_iter)),
                                       trainer.stage_args(0))
      losses[dtype].append(float(metrics["loss"]))
    floats = [a for a in jax.tree.leaves((state.params, state.ema_params, state.opt_state))
              if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and {a.dtype for a in floats} == {jnp.dtype(jnp.float32)}
  assert np.all(np.isfinite(losses["bfloat16"]))
  np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=LOSS_RTOL)
