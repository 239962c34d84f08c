"""The end-to-end pipeline (the README's main job) on a tiny network: teacher, halvings, report."""
import json
import os

import pytest

from commands.pipeline import part_order, part_run_config, run_pipeline, total_cost
from configs.pipeline import get_config, pipeline_config, row_spec
from configs.progressive import distill_config
from eval.quality import metric_settings
from infra.checkpoint import read_config
from eval.report import (IncomparableReportsError, merge_reports, model_entries, report_options,
                         write_report)
from tests.tiny_config import tiny_teacher_config


def tiny_pipeline(tmp_path):
  return pipeline_config(
      parts=dict(teacher=tiny_teacher_config(num_train_steps=4),
                 progressive=distill_config(tiny_teacher_config(), teacher_steps=4,
                                            steps_per_stage=2, lr=1e-3, fidelity_samples=8)),
      teachers=dict(progressive="teacher"),
      rows=dict(teacher=row_spec((1, 4)), progressive=row_spec()),
      num_samples=16, batch_size=8, reference_steps=8, classifier_steps=20,
      classifier_dir=str(tmp_path / "classifier"))


def test_parts_run_after_their_teachers(tmp_path):
  config = tiny_pipeline(tmp_path)
  assert part_order(config) == ["teacher", "progressive"]
  with config.teachers.unlocked():
    config.teachers.teacher = "progressive"
  with pytest.raises(ValueError, match="cycle"):
    part_order(config)
  with config.teachers.unlocked():
    config.teachers.teacher = "nowhere"
  with pytest.raises(ValueError, match="do not exist"):
    part_order(config)


def test_pipeline_writes_every_part_and_resumes(tmp_path):
  config = tiny_pipeline(tmp_path)
  workdir = str(tmp_path)
  rows = run_pipeline(config, workdir)
  assert [(r["model"], r["steps"]) for r in rows] == [
      ("teacher", 1), ("teacher", 4), ("progressive", 2), ("progressive", 1), ("teacher", 8)]
  for part in ("teacher", "progressive"):
    assert os.listdir(os.path.join(workdir, part, "checkpoints"))
  # Training cost: updates of the whole schedule, 2 teacher evaluations per example-update.
  assert {r["model"]: (r["train_updates"], r["teacher_evaluations"]) for r in rows} == {
      "teacher": (4, 0), "progressive": (4, 4 * 16 * 2)}
  report = json.load(open(os.path.join(workdir, "report", "report.json")))
  assert len(report["rows"]) == len(rows)
  assert report["parts"] == {"teacher": "teacher", "progressive": "progressive"}
  assert os.path.exists(os.path.join(workdir, "report", "quality_vs_steps.png"))
  assert sorted(json.load(open(os.path.join(workdir, "progressive", "stage_metrics.json")))) == [
      "1steps", "2steps"]
  # A second run finds both trainings finished (no new checkpoint, no seconds added to their
  # cost) and only rewrites the report.
  steps = {part: sorted(os.listdir(os.path.join(workdir, part, "checkpoints")))
           for part in ("teacher", "progressive")}
  stamps = {part: os.path.getmtime(os.path.join(workdir, part, "checkpoints", steps[part][-1]))
            for part in steps}
  again = run_pipeline(config, workdir)
  for part in steps:
    assert sorted(os.listdir(os.path.join(workdir, part, "checkpoints"))) == steps[part]
    assert os.path.getmtime(os.path.join(workdir, part, "checkpoints", steps[part][-1])) == stamps[part]
  assert [r["steps"] for r in again] == [r["steps"] for r in rows]
  assert [r["train_seconds"] for r in again] == [r["train_seconds"] for r in rows]
  for key in ("FD-digits", "fidelity_psnr"):
    assert [r[key] for r in again] == [r[key] for r in rows]
  # Row selection (configs/pipeline.py row_spec): a student's last stage ends, an NFE cap.
  progressive, teacher = (os.path.join(workdir, part) for part in ("progressive", "teacher"))
  assert [e.num_steps for e in model_entries(progressive, "p", last_stages=1)] == [1]
  assert [e.num_steps for e in model_entries(progressive, "p", max_nfe=1)] == [1]
  assert [e.num_steps for e in model_entries(progressive, "p")] == [2, 1]
  assert [e.num_steps for e in model_entries(teacher, "t", (1, 4), ("heun",), max_nfe=3)] == [1]


def test_fid_without_inception_weights_stops_before_training(tmp_path):
  config = tiny_pipeline(tmp_path)
  with config.report.unlocked():
    config.report.metrics = ("fd_dataset", "fid")
    config.report.inception_weights = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="python -m eval.convert_inception"):
    run_pipeline(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "teacher")


def _report(path, num_samples, model):
  row = dict(model=model, checkpoint_step=1, sampler="ddim", steps=1, guidance_weight=0.0,
             nfe=1, seconds_per_image=0.1, fidelity_psnr=20.0)
  options = report_options(str(path), num_samples=num_samples)
  write_report([row], options, str(path), "t")
  return str(path / "report.json")


def test_merge_refuses_reports_with_different_metric_settings(tmp_path):
  a = _report(tmp_path / "a", 500, "one")
  b = _report(tmp_path / "b", 500, "two")
  c = _report(tmp_path / "c", 1000, "three")
  rows = merge_reports([a, b], str(tmp_path / "merged"))
  assert [r["model"] for r in rows] == ["one", "two"]
  merged = json.load(open(tmp_path / "merged" / "report.json"))
  assert merged["merged"] == [a, b] and len(merged["rows"]) == 2
  with pytest.raises(IncomparableReportsError, match=r"num_samples \(500 vs 1000\)"):
    merge_reports([a, c], str(tmp_path / "refused"))
  assert not (tmp_path / "refused").exists()
  # FID settings name the resize convention; FD over the dataset classifier has none.
  assert "fid_resize" not in metric_settings(report_options(str(tmp_path)))
  fid = metric_settings(report_options(str(tmp_path), metrics=("fid",)))
  assert "bilinear resize to 299x299" in fid["fid_resize"]


def test_a_grown_part_gets_its_inner_workdir_and_counts_its_inner_runs_cost():
  """digits_all's Matryoshka grows around the `matryoshka_inner` part (mdm.inner_workdir, the
  method's teacher_workdir_key), the two at the teacher's budget, and its cost adds both."""
  config = get_config("digits_all")
  run = part_run_config(config, "matryoshka", "/w")
  assert (run.mdm.inner_workdir, run.teacher.workdir) == ("/w/matryoshka_inner", "")
  parts = config.parts
  assert (parts.matryoshka.num_train_steps + parts.matryoshka_inner.num_train_steps
          == parts.teacher.num_train_steps)
  costs = {"matryoshka": dict(train_updates=1000, teacher_evaluations=0, train_seconds=5.0),
           "matryoshka_inner": dict(train_updates=1000, teacher_evaluations=0, train_seconds=2.0)}
  assert total_cost(costs, "matryoshka", config.cost_includes) == dict(
      train_updates=2000, teacher_evaluations=0, train_seconds=7.0)
  assert total_cost(costs, "matryoshka_inner", config.cost_includes) == costs["matryoshka_inner"]


def test_seeds_train_each_student_again_and_report_mean_and_spread(tmp_path):
  """seeds = 3: the teacher once, the student three times with run seeds 0, 1, 2; the summary
  row is the mean and sample standard deviation of the three runs' rows, written out here."""
  config = tiny_pipeline(tmp_path)
  config.seeds = 3
  rows = run_pipeline(config, str(tmp_path))
  models = sorted({r["model"] for r in rows})
  assert models == ["progressive", "progressive_seed1", "progressive_seed2", "teacher"]
  assert [read_config(str(tmp_path / m))["seed"] for m in models[:3]] == [0, 1, 2]
  report = json.load(open(tmp_path / "report" / "report.json"))
  summary = {r["steps"]: r for r in report["seed_summary"]}
  assert sorted(summary) == [1, 2] and {r["seeds"] for r in summary.values()} == {3}
  for steps, row in summary.items():
    values = [r["FD-digits"] for r in rows if r["model"].startswith("progressive")
              and r["steps"] == steps]
    assert len(values) == 3 and len(set(values)) == 3, values   # the seeds differ
    mean = sum(values) / 3
    std = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert row["FD-digits"] == pytest.approx(mean, rel=1e-12)
    assert row["FD-digits_std"] == pytest.approx(std, rel=1e-9)
  assert "± " in open(tmp_path / "report" / "report.md").read()
  assert {r["train_updates"] for r in rows if r["model"] != "teacher"} == {4}
