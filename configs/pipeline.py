"""The end-to-end pipeline: --mode=pipeline --config=configs/pipeline.py:<preset>.

Trains a teacher (`teacher_run`, a configs/teacher.py preset) in <workdir>/teacher,
distills it progressively (`distill_run`, a configs/progressive.py preset) in
<workdir>/progressive, then writes the quality-vs-steps report in <workdir>/report.
Every part resumes from its own checkpoints, so an interrupted pipeline restarted
with the same command continues where it stopped. Override a part's keys with e.g.
--config.teacher_run.num_train_steps=500 or --config.distill_run.distill.steps_per_stage=100.
"""
import ml_collections

from configs import progressive, teacher
from configs.base import select


def pipeline_config(preset: str, num_samples: int, reference_steps: int):
  """`report` holds keyword arguments of eval.report.quality_report."""
  c = ml_collections.ConfigDict()
  c.teacher_run = teacher.get_config(preset)
  c.distill_run = progressive.get_config(preset)
  c.report = ml_collections.ConfigDict(dict(
      num_samples=num_samples, reference_steps=reference_steps, steps=(1, 2, 4, 8, 16, 32, 64)))
  return c


PRESETS = {
    "digits": lambda: pipeline_config("digits", num_samples=500, reference_steps=128),
    "fashion_mnist": lambda: pipeline_config("fashion_mnist", num_samples=5000,
                                             reference_steps=512),
}


def get_config(arg=None):
  return select(PRESETS, arg, "pipeline")
