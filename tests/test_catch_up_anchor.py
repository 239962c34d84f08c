"""Catch-Up's higher-order targets and its one-step stage's anchor: for k = 2 and 3 the loss's
gradient is that of the same loss with the targets computed by explicit network calls at
z - j h v and passed in as constants; the one-step student distils its main output, anchored
to a slow EMA evaluated without dropout, and the trainer keeps Adam and both EMAs across a
curriculum point."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillation.catch_up import catch_up_steps
from distillation.flow_matching import mse
from infra.mesh import make_mesh
from tests.distill_fixtures import gmm_batch
from tests.test_catch_up import (catch_up_run, onestep_gmm_config, random_method,  # noqa: F401
                                 tiny_onestep_config)
from training.method import get_method
from training.trainer import Trainer

E0 = 1e-5


def explicit_targets(u, z, t, h, order):
  """The Runge-Kutta slope over -h written out (Heun; the reference's RK-34 third stage) and
  target_j = u(z - j h v, max(t - j h, e0)), each by its own network call."""
  hz, at = h[:, None], lambda s: jnp.maximum(s, E0)
  k1 = u(z, t)
  k2 = u(z - hz * k1, at(t - h))
  if order == 2:
    v = 0.5 * (k1 + k2)
  else:
    k3 = u(z - hz * (7 / 4 * k1 + 1 / 4 * k2), at(t - 2 * h))
    v = 5 / 12 * k1 + 2 / 3 * k2 - 1 / 12 * k3
  return [u(z - j * hz * v, at(t - j * h)) for j in range(1, order + 1)]


@pytest.mark.parametrize("order", [2, 3])
def test_loss_gradient_equals_the_loss_with_explicit_constant_targets(order):
  method, params = random_method(order)
  cud = method.config.cud
  batch, rng = gmm_batch(jax.random.key(2), 128), jax.random.key(3)
  data_rng, _ = jax.random.split(rng)
  h_rng, _ = jax.random.split(jax.random.fold_in(rng, 1))
  x, eps, t, z, _ = method.noised(batch, data_rng)
  h = catch_up_steps(h_rng, t, cud.delta, cud.num_steps)
  u = lambda y, s: method.velocities(params, y, s, None)[0]
  keep = (t >= E0 + order * h)[:, None]
  targets = [jnp.where(keep, q, eps - x) for q in explicit_targets(u, z, t, h, order)]

  def by_hand(p):
    heads = method.velocities(p, z, t, None)
    return (sum(mse(a, b) for a, b in zip(heads, targets))
            + sum(mse(a, eps - x) for a in heads))

  want = jax.grad(by_hand)(params)
  got = jax.grad(lambda p: method.loss(p, {}, batch, rng, {})[0])(params)
  np.testing.assert_allclose(method.loss(params, {}, batch, rng, {})[0], by_hand(params),
                             rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_onestep_distils_the_main_output_anchored_to_the_target_ema():
  """L = MSE(z - u_1(z, 1), x_hat_0[m]) + 0.1 MSE(u_1, u_1 of the anchor params) with u_1 the
  main head; the anchor is the trainer's target EMA at onestep.anchor_decay = 0.9999."""
  teacher_method, teacher = random_method(2)
  method = get_method(onestep_gmm_config())
  assert method.target_ema_decay() == 0.9999 and not method.restart_at_stage
  rows = method.generate_trajectories(teacher, jax.random.key(6), 64)
  anchor = jax.tree.map(lambda p: 0.9 * p, teacher)
  stage = method.stages()[1].jax_args()
  loss, _ = method.loss(teacher, {}, rows, jax.random.key(7), stage, ema=anchor)
  main = lambda p: teacher_method.velocities(p, rows["noise"], jnp.ones(64))[0]
  want = (mse(rows["noise"] - main(teacher), rows["trajectory"][:, 11])
          + 0.1 * mse(main(teacher), main(anchor)))
  np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_onestep_keeps_adam_and_the_anchor_across_a_curriculum_point(tmp_path, catch_up_run):
  """At the boundary step 2 -> 3 (point 1 -> 2) nothing restarts: the sampling EMA and the
  anchor stay EMAs of the whole run, Adam's count keeps growing."""
  teacher, trajectories = str(catch_up_run / "cud"), str(catch_up_run / "trajectories")
  workdir = str(tmp_path / "run")
  before = Trainer(tiny_onestep_config(teacher, trajectories, 2), workdir, make_mesh(1)).run()
  before = jax.device_get(before)
  trainer = Trainer(tiny_onestep_config(teacher, trajectories, 3), workdir, make_mesh(1))
  crossed = jax.device_get(trainer.next_stage_fn(trainer.state, 1))
  for name in ("ema_params", "target_params", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(before, name)),
                    jax.tree.leaves(getattr(crossed, name)), strict=True):
      np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(crossed.params), jax.tree.leaves(crossed.ema_params)))
