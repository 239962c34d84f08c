"""Trainer: bit-exact resume, 1 vs 8 devices, skipped non-finite updates."""
import jax
import numpy as np
import pytest

from infra.mesh import make_mesh, shard_batch
from tests.tiny_config import tiny_teacher_config
from training.trainer import Trainer


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.step, state.frozen)))]


def _train(workdir, num_steps, devices):
  config = tiny_teacher_config(num_train_steps=num_steps)
  return Trainer(config, str(workdir), make_mesh(devices)).run()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """6 steps in one go, on 1 and on 8 devices."""
  return {n: _train(tmp_path_factory.mktemp(f"full{n}"), 6, n) for n in (1, 8)}


@pytest.mark.parametrize("devices", [1, 8])
def test_resume_is_bit_exact(tmp_path, uninterrupted, devices):
  _train(tmp_path, 3, devices)                 # stop after 3 steps ...
  resumed = _train(tmp_path, 6, devices)       # ... and restart to 6
  assert int(resumed.step) == 6
  for a, b in zip(_leaves(uninterrupted[devices]), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_one_and_eight_devices_agree(uninterrupted):
  for a, b in zip(_leaves(uninterrupted[1]), _leaves(uninterrupted[8]), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_nan_batch_skips_the_update(tmp_path):
  """A NaN batch leaves the parameters, the EMA and Adam's moments exactly as they were (after
  a finite first step, so the EMA differs from the parameters and would move if updated)."""
  config = tiny_teacher_config()
  config.optim.ema_rampup = 0.0   # a ramped-up EMA equals the parameters after one step
  trainer = Trainer(config, str(tmp_path), make_mesh(8))
  state, _ = trainer.step_fn(trainer.state, shard_batch(trainer.mesh, next(trainer.data_iter)),
                             trainer.stage_args(0))
  kept = lambda s: (s.params, s.ema_params, s.opt_state.inner_state)
  before = jax.device_get(kept(state))
  assert any(not np.array_equal(p, e) for p, e in
             zip(jax.tree.leaves(before[0]), jax.tree.leaves(before[1])))
  batch = next(trainer.data_iter)
  batch["image"][0, 0, 0, 0] = np.nan
  state, metrics = trainer.step_fn(state, shard_batch(trainer.mesh, batch), trainer.stage_args(0))
  assert not np.isfinite(float(metrics["loss"]))
  assert int(state.opt_state.notfinite_count) == 1
  assert int(state.step) == 2
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(kept(state))),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  # A finite batch afterwards updates again and resets the count.
  state, _ = trainer.step_fn(state, shard_batch(trainer.mesh, next(trainer.data_iter)),
                             trainer.stage_args(0))
  assert int(state.opt_state.notfinite_count) == 0
  assert int(state.opt_state.total_notfinite) == 1
