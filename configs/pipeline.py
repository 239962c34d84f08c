"""The end-to-end pipeline: --mode=pipeline --config=configs/pipeline.py:<preset>.

A pipeline is a set of named **parts**, each a full run config trained in <workdir>/<part>,
and one quality report of them in <workdir>/report:

  parts     {part: run config}; a part whose method needs a teacher names it in `teachers`
  teachers  {part: the part whose workdir is its teacher.workdir}; parts run teachers first
  rows      {part: how the report evaluates it}: `steps` (step counts of its latest
            checkpoint; () = every stage end at the stage's own N, for distilled students),
            `samplers`, `guidance_weights`, `reference` (the part whose reference_steps-step
            DDIM samples its fidelity is measured against)
  report    the report's metric settings (eval.report.report_options)

Every part resumes from its own checkpoints, so an interrupted pipeline restarted with the
same command continues where it stopped and finished parts are skipped. Override a part's
keys with e.g. --config.parts.teacher.num_train_steps=500 or
--config.parts.progressive.distill.steps_per_stage=100.

Presets:
  digits         teacher -> progressive distillation 64 -> 1 steps -> report (the README's
                 first command, about 7 minutes on 2 CPU cores)
  fashion_mnist  the same on Fashion-MNIST (hours on a CPU)
"""
import ml_collections

from configs import progressive, teacher
from configs.base import select

TEACHER_STEPS = (1, 2, 4, 8, 16, 32, 64)


def row_spec(steps=(), samplers=("ddim",), guidance_weights=(0.0,), reference="teacher"):
  """How the report evaluates one part (see the module docstring)."""
  return ml_collections.ConfigDict(dict(steps=tuple(steps), samplers=tuple(samplers),
                                        guidance_weights=tuple(guidance_weights),
                                        reference=reference))


def pipeline_config(parts: dict, teachers: dict, rows: dict, **report):
  """A pipeline of `parts` (see the module docstring); `report` holds the keyword arguments
  of eval.report.report_options."""
  c = ml_collections.ConfigDict()
  c.parts = ml_collections.ConfigDict(parts)
  c.teachers = ml_collections.ConfigDict(teachers)
  c.rows = ml_collections.ConfigDict(rows)
  c.report = ml_collections.ConfigDict(report)
  return c


def progressive_pipeline(preset: str, num_samples: int, reference_steps: int):
  """Teacher -> progressive distillation -> report."""
  return pipeline_config(
      parts=dict(teacher=teacher.get_config(preset), progressive=progressive.get_config(preset)),
      teachers=dict(progressive="teacher"),
      rows=dict(teacher=row_spec(TEACHER_STEPS), progressive=row_spec()),
      num_samples=num_samples, reference_steps=reference_steps)


PRESETS = {
    "digits": lambda: progressive_pipeline("digits", num_samples=500, reference_steps=128),
    "fashion_mnist": lambda: progressive_pipeline("fashion_mnist", num_samples=5000,
                                                  reference_steps=512),
}


def get_config(arg=None):
  return select(PRESETS, arg, "pipeline")
