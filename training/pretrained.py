"""A teacher's parameters for a run, and where a run's schedule ends."""
import ml_collections

from infra import checkpoint
from infra.params import load_params
from training.method import get_method


class UnfinishedTeacherError(checkpoint.CheckpointError):
  """The teacher's latest checkpoint is short of the end of its training schedule."""


def schedule_end(saved_config: dict) -> int:
  """The step at which a run's schedule ends: the sum of its method's stage lengths."""
  stages = get_method(ml_collections.ConfigDict(saved_config)).stages()
  return sum(stage.num_updates for stage in stages)


def run_end(config) -> int:
  """The step at which a run of `config` stops: its schedule's end, or num_train_steps when
  that comes sooner."""
  end = schedule_end(config)
  return config.num_train_steps if 0 < config.num_train_steps < end else end


def load_teacher(config, mesh, key: str = "teacher.workdir"):
  """The EMA params of the latest checkpoint of the workdir that config key `key` names
  (default `teacher.workdir`; a method's `teacher_workdir_key`), replicated on `mesh`.

  A teacher stopped before the end of its schedule (preempted, or num_train_steps cut it
  short) is an error unless `teacher.allow_unfinished`.
  """
  section, name = key.split(".")
  workdir = config[section][name]
  if not workdir:
    raise ValueError(f"Method {config.method!r} needs a teacher: set "
                     f"--config.{key}=<workdir of a trained teacher>.")
  params, saved, step = load_params(workdir, "ema_params", mesh)
  end = schedule_end(saved)
  if step < end and not config.teacher.allow_unfinished:
    raise UnfinishedTeacherError(
        f"The teacher in {workdir} stops at step {step}, short of the end of its "
        f"schedule (step {end}): finish its training first (run it again with the same "
        f"command), or pass --config.teacher.allow_unfinished=True to distil it as it is.")
  return params
