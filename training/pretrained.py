"""Loading trained parameters from another run's workdir (a teacher, or for sampling)."""
import jax
import ml_collections
import orbax.checkpoint as ocp

from training import checkpoint
from training.mesh import make_mesh, replicated
from training.method import get_method


def load_params(workdir: str, which: str = "ema_params", mesh=None, step=None):
  """(params, saved config dict, step) of checkpoint `step` (default: latest) in `workdir`.

  `which` is `ema_params` or `params`; only that subtree is read, replicated on `mesh`
  (default: all devices), whatever the device count the checkpoint was written with.
  """
  manager = checkpoint.require_checkpoint(workdir)
  step = manager.latest_step() if step is None else step
  if step not in manager.all_steps():
    raise checkpoint.CheckpointError(f"No checkpoint of step {step} in {manager.directory}; "
                                     f"it has steps {sorted(manager.all_steps())}.")
  sharding = replicated(mesh or make_mesh())
  try:
    saved = checkpoint.state_metadata(manager, step)
    target = {which: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), saved[which],
        is_leaf=lambda m: hasattr(m, "shape"))}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True),
        config=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many kinds for damaged files
    raise checkpoint.CheckpointError(
        f"Could not read the checkpoint of step {step} in {manager.directory}: "
        f"{type(e).__name__}: {e}") from e
  return restored["state"][which], restored["config"], step


def check_same_structure(expected, got, what: str):
  """Raise a clear error when two parameter trees differ in names or shapes."""
  shapes = lambda tree: {jax.tree_util.keystr(k): tuple(v.shape)
                         for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  want, have = shapes(expected), shapes(got)
  if want == have:
    return
  missing = sorted(set(want) - set(have))[:5]
  extra = sorted(set(have) - set(want))[:5]
  shape = sorted(k for k in set(want) & set(have) if want[k] != have[k])[:5]
  raise ValueError(
      f"{what} does not match the network of this config: missing {missing}, unexpected "
      f"{extra}, different shapes {[(k, want[k], have[k]) for k in shape]}. Use the `model` "
      f"settings the checkpoint was trained with (saved in its checkpoints/<step>/config).")


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
