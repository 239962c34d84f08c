"""Checkpoints in <workdir>/checkpoints with orbax's CheckpointManager.

Each step directory holds three items: `state` (the TrainState pytree: params,
EMA, optimizer state, step, stage, frozen teacher, RNG key), `data` (each
process's data-iterator position, grain's handler) and `config` (the run's
config, JSON). Saves are
async and atomic (orbax writes to a temporary directory and renames it, or on GCS
writes a commit file).

Workdirs are `etils.epath` paths: a local folder (made absolute) or a bucket URI such as
gs://bucket/run, which every host shares as it is.
"""
import os
from typing import Optional

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("state", "data", "config")


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used, with what to do about it."""


def workdir_path(workdir) -> epath.Path:
  """`workdir` as an epath: a URI (gs://...) as it is, a local path made absolute."""
  path = epath.Path(workdir)
  return path if "://" in os.fspath(workdir) else path.absolute()


def checkpoint_dir(workdir) -> epath.Path:
  return workdir_path(workdir) / "checkpoints"


# The metric whose lowest value marks the best checkpoint (the trainer's held-out loss).
BEST_METRIC = "heldout_loss"


def make_manager(workdir: str, keep: int = 3, keep_steps=(), read_only: bool = False,
                 track_best: bool = False) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints, and forever those at `keep_steps` (stage ends).

  track_best (and every read-only manager): saves may carry metrics, and the checkpoint with
  the lowest BEST_METRIC is kept too (orbax's best_fn, mode min; `manager.best_step()`).
  """
  policies = ocp.checkpoint_managers
  best_fn = lambda metrics: metrics[BEST_METRIC]
  kept = [policies.LatestN(keep), policies.CustomSteps(list(keep_steps))]
  if track_best:
    kept.append(policies.BestN(get_metric_fn=best_fn, reverse=True, n=1,
                               keep_checkpoints_without_metrics=False))
  policy = policies.AnyPreservationPolicy(kept)
  options = ocp.CheckpointManagerOptions(preservation_policy=None if read_only else policy,
                                         create=not read_only,
                                         best_fn=best_fn if track_best or read_only else None,
                                         best_mode="min", keep_checkpoints_without_metrics=True,
                                         read_only=read_only, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, config,
         force: bool = False, metrics: Optional[dict] = None):
  """Start an async save of the state, the data iterator position and the config (and
  `metrics`, e.g. {BEST_METRIC: value}, on a manager that tracks the best checkpoint)."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict())), force=force, metrics=metrics)


def _abstract(tree):
  """Shapes, dtypes and shardings of `tree`: restore onto the same layout."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def restore(manager: ocp.CheckpointManager, like_state, data_iterator,
            step: Optional[int] = None):
  """(step, state) of `step` (default: the latest), or (None, None) if there is none.

  `like_state` gives the structure, shapes and shardings the state is restored onto;
  `data_iterator` is moved to the saved position.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None, None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(like_state)),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
  except Exception as e:  # orbax raises many kinds for damaged or mismatched files
    raise _unreadable(manager, step, e) from e
  return step, restored["state"]


def _unreadable(manager: ocp.CheckpointManager, step: int, error: Exception) -> CheckpointError:
  """The error for a checkpoint that cannot be read, with what to do about it."""
  path = epath.Path(manager.directory) / str(step)
  return CheckpointError(
      f"Could not restore the checkpoint at {path}: {type(error).__name__}: {error}\n"
      f"If it is damaged, delete that step directory to resume from an earlier one; if the "
      f"config changed (network, method), run with the config the checkpoint was written "
      f"with (saved in {path}/config).")


def state_metadata(manager: ocp.CheckpointManager, step: int):
  """The saved state's tree of array metadata (shape, dtype) at `step`, read without the
  arrays."""
  path = epath.Path(manager.directory) / str(step) / "state"
  try:
    metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
    if metadata is None:
      raise ValueError(f"no readable metadata in {path}")
  except Exception as e:  # orbax raises many kinds for damaged files
    raise _unreadable(manager, step, e) from e
  return metadata


def read_config(workdir: str, step=None) -> dict:
  """The config saved with checkpoint `step` (default: the latest) of `workdir` (a dict);
  errors if none."""
  manager = require_checkpoint(workdir)
  step = manager.latest_step() if step is None else step
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def require_checkpoint(workdir: str) -> ocp.CheckpointManager:
  """A read-only manager over `workdir`'s checkpoints, or a clear error if there are none."""
  directory = checkpoint_dir(workdir)
  if not directory.is_dir():
    raise CheckpointError(f"No checkpoint directory {directory}: train a model there first "
                          f"(python main.py --mode=train --workdir={workdir} --config=...).")
  manager = make_manager(workdir, read_only=True)
  if manager.latest_step() is None:
    raise CheckpointError(f"{directory} holds no finished checkpoint (an interrupted first "
                          f"save leaves none): train there first, or point --workdir elsewhere.")
  return manager


def select_step(workdir: str, which="best") -> tuple[int, str]:
  """(step, what it is) of the checkpoint to sample or evaluate: 'best' = the lowest
  BEST_METRIC among checkpoints saved with one (else the latest), 'latest', or a step number."""
  manager = require_checkpoint(workdir)
  if str(which) == "latest":
    return manager.latest_step(), "the latest checkpoint"
  if str(which) == "best":
    best = best_step(manager)
    if best is None:
      return manager.latest_step(), "the latest checkpoint (none has a held-out loss)"
    return best, (f"the best checkpoint (lowest {BEST_METRIC} "
                  f"{manager.metrics(best)[BEST_METRIC]:.6g})")
  step = int(which)
  if step not in manager.all_steps():
    raise CheckpointError(f"No checkpoint of step {step} in {manager.directory}; it has steps "
                          f"{sorted(manager.all_steps())}.")
  return step, f"checkpoint {step}"


def best_step(manager: ocp.CheckpointManager) -> Optional[int]:
  """The step with the lowest BEST_METRIC, or None when no checkpoint was saved with one."""
  if not any(manager.metrics(step) for step in manager.all_steps()):
    return None
  return manager.best_step()
