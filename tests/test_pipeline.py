"""The end-to-end pipeline (the README's main job) on a tiny network: teacher, halvings, report."""
import json
import os

import ml_collections

from configs.progressive import distill_config
from tests.tiny_config import tiny_teacher_config
from training.pipeline import run_pipeline


def test_pipeline_writes_every_part_and_resumes(tmp_path):
  config = ml_collections.ConfigDict()
  config.teacher_run = tiny_teacher_config(num_train_steps=4)
  config.distill_run = distill_config(tiny_teacher_config(), teacher_steps=4, steps_per_stage=2,
                                      lr=1e-3, fidelity_samples=8)
  config.report = ml_collections.ConfigDict(dict(num_samples=16, batch_size=8,
                                                 reference_steps=8, steps=(1, 4),
                                                 classifier_steps=20,
                                                 classifier_dir=str(tmp_path / "classifier")))
  workdir = str(tmp_path)
  rows = run_pipeline(config, workdir)
  students = [r for r in rows if r["model"] != "teacher"]
  assert sorted(r["steps"] for r in students) == [1, 2]
  for part in ("teacher", "progressive"):
    assert os.listdir(os.path.join(workdir, part, "checkpoints"))
  report = json.load(open(os.path.join(workdir, "report", "report.json")))
  assert len(report["rows"]) == len(rows)
  assert os.path.exists(os.path.join(workdir, "report", "quality_vs_steps.png"))
  assert sorted(json.load(open(os.path.join(workdir, "progressive", "stage_metrics.json")))) == [
      "1steps", "2steps"]
  # A second run finds both trainings finished (no new checkpoint) and only rewrites the report.
  steps = {part: sorted(os.listdir(os.path.join(workdir, part, "checkpoints")))
           for part in ("teacher", "progressive")}
  stamps = {part: os.path.getmtime(os.path.join(workdir, part, "checkpoints", steps[part][-1]))
            for part in steps}
  again = run_pipeline(config, workdir)
  for part in steps:
    assert sorted(os.listdir(os.path.join(workdir, part, "checkpoints"))) == steps[part]
    assert os.path.getmtime(os.path.join(workdir, part, "checkpoints", steps[part][-1])) == stamps[part]
  assert [r["steps"] for r in again] == [r["steps"] for r in rows]
