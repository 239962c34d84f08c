"""The trainer's EMAs: a method may ask for a second (target) EMA at its own rate, which the
loss sees as `ema` and which never restarts; whether Adam and the sampling EMA restart at a
stage boundary is the method's `restart_at_stage`."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from training.method import Method, Stage
from training.optimizer import make_optimizer
from training.step import init_state, next_stage, train_step

OPTIM = ml_collections.ConfigDict(dict(lr=0.1, warmup_steps=0, schedule="constant", grad_clip=1e9,
                                       b1=0.9, b2=0.999, ema_decay=0.5, ema_rampup=0.0))


class Quadratic(Method):
  """loss = sum((w - ema)^2): the sign of its gradient shows which EMA reached the loss."""

  def __init__(self, mu=None, restart=True):
    super().__init__(None)
    self.mu, self.restart_at_stage = mu, restart

  def target_ema_decay(self):
    return self.mu

  def init(self, rng, teacher_params):
    return {"w": jnp.array([1.0, -2.0])}

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    return jnp.sum(jnp.square(params["w"] - ema["w"])), {}

  def stages(self):
    return [Stage(2), Stage(2)]


def state_of(method, tx):
  state = init_state(method, tx, jax.random.key(0), jax.random.key(1), None)
  # Distinct EMAs, so the test can tell them apart.
  return state.replace(ema_params={"w": jnp.array([1.5, -3.0])},
                       target_params=None if state.target_params is None
                       else {"w": jnp.array([0.5, -1.0])})


STAGE = {"first_step": jnp.asarray(0), "num_updates": jnp.asarray(2),
         "run_updates": jnp.asarray(4)}


@pytest.mark.parametrize("mu", [None, 0.75])
def test_target_ema_reaches_the_loss_and_moves_at_its_own_rate(mu):
  method, tx = Quadratic(mu), make_optimizer(OPTIM)
  state = state_of(method, tx)
  new, _ = train_step(method, tx, OPTIM, state, {}, STAGE)
  w0, ema = np.array([1.0, -2.0]), np.array([1.5, -3.0])
  seen = ema if mu is None else np.array([0.5, -1.0])
  # Adam's first step moves each coordinate by lr * sign(gradient), here opposite for the EMAs.
  w1 = w0 - 0.1 * np.sign(2 * (w0 - seen))
  np.testing.assert_allclose(new.params["w"], w1, rtol=1e-5)
  np.testing.assert_allclose(new.ema_params["w"], 0.5 * ema + 0.5 * w1, rtol=1e-6)
  if mu is None:
    assert new.target_params is None
  else:
    np.testing.assert_allclose(new.target_params["w"], 0.75 * seen + 0.25 * w1, rtol=1e-6)


@pytest.mark.parametrize("restart", [True, False])
def test_stage_boundary_restarts_only_what_the_method_says(restart):
  method, tx = Quadratic(0.75, restart), make_optimizer(OPTIM)
  state, _ = train_step(method, tx, OPTIM, state_of(method, tx), {}, STAGE)
  crossed = next_stage(method, tx, state, 1)
  assert int(crossed.stage_index) == 1
  np.testing.assert_array_equal(crossed.target_params["w"], state.target_params["w"])
  ema = crossed.params["w"] if restart else state.ema_params["w"]
  np.testing.assert_array_equal(crossed.ema_params["w"], ema)
  count = jax.tree.leaves(crossed.opt_state.inner_state)[0]
  assert int(count) == (0 if restart else 1)


@pytest.mark.parametrize("restart", [True, False])
def test_the_warm_up_restarts_with_the_stage_only_if_adam_does(restart):
  """Warm-up over 4 updates, stages of 2: the lr of the first update of stage 2 (step 2) is
  lr / 4 if the method restarts at a stage, else 3 lr / 4 (the run's warm-up goes on)."""
  method = Quadratic(None, restart)
  optim = OPTIM.copy_and_resolve_references()
  optim.warmup_steps = 4
  tx = make_optimizer(optim)
  state = state_of(method, tx).replace(step=jnp.asarray(2))
  second = dict(STAGE, first_step=jnp.asarray(2))
  _, metrics = train_step(method, tx, optim, state, {}, second)
  assert float(metrics["lr"]) == pytest.approx(0.1 * (1 if restart else 3) / 4, rel=1e-6)
