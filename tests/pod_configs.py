"""Tiny configs for the pod-readiness tests (tests/test_pod.py), usable from the command line:

  --config=tests/pod_configs.py:distill    progressive 4 -> 2 -> 1 steps of a tiny digits teacher
  --config=tests/pod_configs.py:pipeline   a tiny teacher (1e6 steps: stopped by SIGTERM) ->
                                           progressive -> report
"""
from configs.base import select
from configs.pipeline import pipeline_config, row_spec
from configs.progressive import distill_config
from tests.tiny_config import tiny_teacher_config


def tiny_distill():
  """2 halvings of 2 updates each (4 steps); set teacher.workdir."""
  return distill_config(tiny_teacher_config(), teacher_steps=4, steps_per_stage=2, lr=1e-3,
                        fidelity_samples=8)


def tiny_pipeline():
  """A teacher part that runs until it is stopped, then a progressive part and a report."""
  teacher = tiny_teacher_config(num_train_steps=1_000_000, log_every_steps=1,
                                checkpoint_every_steps=1_000_000)
  return pipeline_config(parts=dict(teacher=teacher, progressive=tiny_distill()),
                         teachers=dict(progressive="teacher"),
                         rows=dict(teacher=row_spec((1,)), progressive=row_spec()),
                         num_samples=8, batch_size=8, reference_steps=4, classifier_steps=20)


PRESETS = {"distill": tiny_distill, "pipeline": tiny_pipeline}


def get_config(arg=None):
  return select(PRESETS, arg, "pod_configs")
