"""The trainer across stage boundaries: the learning-rate schedule (warm-up, linear anneal,
restart at each stage), the EMA ramp-up and the Adam reset against hand-computed values;
guided (stage 1 -> stage 2) and progressive_encoder runs stopped and resumed bit for bit
across the boundary."""
import bisect

import jax
import numpy as np
import optax
import pytest

from configs.guided import guided_config
from configs.progressive import distill_config
from infra.mesh import make_mesh, shard_batch
from tests.tiny_config import tiny_teacher_config
from training.method import get_method
from training.trainer import Trainer


def distill(teacher_dir, method="progressive", steps_per_stage=2, num_classes=0, **optim):
  """Halvings 4 -> 2 -> 1 of the tiny teacher (2 stages), `steps_per_stage` updates each."""
  config = distill_config(tiny_teacher_config(**{"model.num_classes": num_classes}),
                          teacher_steps=4, steps_per_stage=steps_per_stage, lr=1e-3,
                          fidelity_samples=8)
  config.method = method
  config.optim.update(optim)
  config.teacher.workdir = teacher_dir
  config.checkpoint_every_steps = 100
  return config


def test_learning_rate_schedule_and_adam_reset_by_hand(tmp_path, teacher_dir):
  """lr at step s of a 4-update stage = 1e-3 min(1, (s + 1) / 2) (1 - s / 4), restarting at
  the boundary; there Adam's moments restart, so the first update of stage 2 is exactly
  Adam's first step, -lr_0 g / (|g| + eps) with g the clipped gradient."""
  config = distill(teacher_dir, steps_per_stage=4, warmup_steps=2, schedule="linear")
  trainer = Trainer(config, str(tmp_path), make_mesh(1))
  expected = 1e-3 * np.array([0.5, 0.75, 0.5, 0.25] * 2)
  state, index, lrs = trainer.state, 0, []
  for step in range(8):
    stage_index = bisect.bisect_right(trainer.bounds, step) - 1
    batch = shard_batch(trainer.mesh, next(trainer.data_iter))
    stage = trainer.stage_args(stage_index)
    if stage_index != index:
      state, index = trainer.next_stage_fn(state, stage_index), stage_index
      adam = state.opt_state.inner_state[1]          # (clip, scale_by_adam)
      assert int(adam.count) == 0
      assert all(not np.any(a) for a in jax.tree.leaves((adam.mu, adam.nu)))
      rng = jax.random.fold_in(state.rng, state.step)
      grads = jax.grad(lambda p: trainer.method.loss(p, state.frozen, batch, rng, stage)[0])(
          state.params)
      grads = optax.clip_by_global_norm(1.0).update(grads, None)[0]
      before = jax.device_get(state.params)
    state, metrics = trainer.step_fn(state, batch, stage)
    lrs.append(float(metrics["lr"]))
    if step == 4:
      for p0, p1, g in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params)),
                           jax.tree.leaves(jax.device_get(grads)), strict=True):
        np.testing.assert_allclose(p1 - p0, -expected[4] * g / (np.abs(g) + 1e-8), rtol=0,
                                   atol=3e-7)
  np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_ema_rampup_by_hand(tmp_path, teacher_dir):
  """With optim.ema_rampup = 0.5 the decay at step s of a stage is min(0.9, 0.5 ** (1 / (s / 2)))
  = 0, 0.25, 0.5, 0.63 (restarting at the boundary): ema' = d ema + (1 - d) params'."""
  config = distill(teacher_dir, steps_per_stage=4, ema_decay=0.9, ema_rampup=0.5)
  trainer = Trainer(config, str(tmp_path), make_mesh(1))
  expected = [0.0, 0.25, 0.5, 0.5 ** (1 / 1.5)] * 2
  state, index = trainer.state, 0
  for step in range(8):
    stage_index = bisect.bisect_right(trainer.bounds, step) - 1
    if stage_index != index:
      state, index = trainer.next_stage_fn(state, stage_index), stage_index
    ema = jax.device_get(state.ema_params)
    state, _ = trainer.step_fn(state, shard_batch(trainer.mesh, next(trainer.data_iter)),
                               trainer.stage_args(stage_index))
    d = expected[step]
    for e0, p1, e1 in zip(jax.tree.leaves(ema), jax.tree.leaves(jax.device_get(state.params)),
                          jax.tree.leaves(jax.device_get(state.ema_params)), strict=True):
      np.testing.assert_allclose(e1, d * e0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)
    if d == 0.0:
      assert all(np.array_equal(p, e) for p, e in zip(
          jax.tree.leaves(jax.device_get(state.params)),
          jax.tree.leaves(jax.device_get(state.ema_params))))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.frozen, state.opt_state, state.step,
       state.stage_index)))]


def _resume_across_the_boundary(config_at, tmp_path, stops, last_stage):
  """Train to the end in one go, and by runs stopped at `stops` (the last = the end) in one
  workdir; the final states (in stage `last_stage`) are equal bit for bit."""
  full = Trainer(config_at(stops[-1]), str(tmp_path / "full"), make_mesh(1)).run()
  workdir = str(tmp_path / "interrupted")
  for stop in stops:
    state = Trainer(config_at(stop), workdir, make_mesh(1)).run()
    assert int(state.step) == stop
  assert int(state.stage_index) == int(full.stage_index) == last_stage
  for a, b in zip(_leaves(full), _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_guided_resumes_bit_exact_across_the_phase_boundary(tmp_path, cond_teacher_dir):
  """Stage 1 (guided_w, 2 updates) then halvings 4 -> 2 -> 1; stopped at the phase boundary
  (step 2) and in stage 2 (step 3)."""

  def config_at(stop):
    config = guided_config(distill(cond_teacher_dir, num_classes=10), w_steps=2)
    config.num_train_steps = stop
    return config

  _resume_across_the_boundary(config_at, tmp_path, (2, 3, 6), last_stage=2)


@pytest.mark.slow
def test_progressive_encoder_resumes_bit_exact_across_the_phase_boundary(tmp_path, teacher_dir):
  """Stage 0 (data_first_step = 1) then stage 1 (= 0); stopped at the boundary and after it."""

  def config_at(stop):
    config = distill(teacher_dir, method="progressive_encoder", steps_per_stage=2)
    config.num_train_steps = stop
    return config

  stages = get_method(config_at(4)).stages()
  assert [s.args["data_first_step"] for s in stages] == [1, 0]
  _resume_across_the_boundary(config_at, tmp_path, (2, 3, 4), last_stage=1)
