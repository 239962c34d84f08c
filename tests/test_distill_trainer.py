"""Distillation through the trainer: resume across stages, one compiled step for all stages."""
import json
import os

import jax
import numpy as np
import pytest

from configs.progressive import distill_config
from infra.mesh import make_mesh
from infra.params import load_params
from tests.tiny_config import tiny_teacher_config
from training.trainer import Trainer


def progressive_config(teacher_dir, num_train_steps):
  """8 -> 4 -> 2 -> 1 student steps, 3 updates per halving (9 in all)."""
  config = distill_config(tiny_teacher_config(), teacher_steps=8, steps_per_stage=3, lr=1e-3,
                          fidelity_samples=8)
  config.teacher.workdir = teacher_dir
  config.num_train_steps = num_train_steps
  config.checkpoint_every_steps = 2
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.frozen, state.opt_state, state.step, state.stage_index)))]


def test_resume_mid_stage_and_at_boundary_is_bit_exact(tmp_path, teacher_dir):
  full = Trainer(progressive_config(teacher_dir, 9), str(tmp_path / "full"), make_mesh(1))
  full_state = full.run()
  assert full.step_fn._cache_size() == 1        # one compiled step served all three stages
  assert int(full_state.stage_index) == 2

  workdir = str(tmp_path / "interrupted")
  for stop in (4, 6, 9):                         # mid-stage 2, the 2/3 boundary, the end
    state = Trainer(progressive_config(teacher_dir, stop), workdir, make_mesh(1)).run()
    assert int(state.step) == stop
  for a, b in zip(_leaves(full_state), _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)

  metrics = json.load(open(os.path.join(workdir, "stage_metrics.json")))
  assert sorted(metrics) == ["1steps", "2steps", "4steps"]
  assert all(np.isfinite(m["fidelity_psnr"]) for m in metrics.values())
  grids = os.listdir(os.path.join(workdir, "samples"))
  assert {"4steps_step0000003.png", "2steps_step0000006.png", "1steps_step0000009.png"} <= set(grids)


def test_student_becomes_teacher_at_stage_boundary(tmp_path, teacher_dir):
  trainer = Trainer(progressive_config(teacher_dir, 4), str(tmp_path), make_mesh(1))
  state = trainer.run()
  # Step 4 is the first step of stage 2: frozen is exactly the student at the end of stage 1
  # (the kept step-3 checkpoint), which differs from the original teacher.
  end_of_stage_1, _, _ = load_params(str(tmp_path), "params", step=3)
  teacher, _, _ = load_params(teacher_dir)
  frozen = jax.tree.leaves(jax.device_get(state.frozen))
  for a, b in zip(frozen, jax.tree.leaves(jax.device_get(end_of_stage_1)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(frozen, jax.tree.leaves(jax.device_get(teacher))))


def test_teacher_must_match_the_network(tmp_path, teacher_dir):
  config = progressive_config(teacher_dir, 9)
  config.model.hidden = 48
  with pytest.raises(ValueError, match="does not match the network"):
    Trainer(config, str(tmp_path), make_mesh(1))
  config = progressive_config(str(tmp_path / "nowhere"), 9)
  with pytest.raises(Exception, match="No checkpoint directory"):
    Trainer(config, str(tmp_path / "run"), make_mesh(1))


def test_one_and_eight_devices_agree_across_stages(tmp_path, teacher_dir):
  one = Trainer(progressive_config(teacher_dir, 9), str(tmp_path / "one"), make_mesh(1)).run()
  eight = Trainer(progressive_config(teacher_dir, 9), str(tmp_path / "eight"), make_mesh(8)).run()
  for a, b in zip(_leaves(one), _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
