"""`--mode=pipeline`: teacher -> progressive distillation -> quality report, resumable."""
import os

from absl import logging

from eval.report import quality_report
from training.trainer import train


def run_pipeline(config, workdir: str):
  """Run the three parts in <workdir>/{teacher,progressive,report}; finished parts are skipped
  (the trainer resumes from the last checkpoint, which is the end)."""
  teacher_dir = os.path.join(workdir, "teacher")
  student_dir = os.path.join(workdir, "progressive")
  logging.info("pipeline 1/3: teacher in %s", teacher_dir)
  train(config.teacher_run, teacher_dir)
  distill_run = config.distill_run
  with distill_run.unlocked():
    distill_run.teacher.workdir = teacher_dir
  logging.info("pipeline 2/3: progressive distillation in %s", student_dir)
  train(distill_run, student_dir)
  report_dir = os.path.join(workdir, "report")
  logging.info("pipeline 3/3: quality report in %s", report_dir)
  return quality_report(teacher_dir, [student_dir], report_dir, **config.report)
