"""Checkpoints in <workdir>/checkpoints with orbax's CheckpointManager.

Each step directory holds three items: `state` (the TrainState pytree: params,
EMA, optimizer state, step, stage, frozen teacher, RNG key), `data` (each
process's data-iterator position, grain's handler) and `config` (the run's
config, JSON). Saves are
async and atomic (orbax writes to a temporary directory and renames it).
"""
import os
from typing import Optional

import grain
import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config")


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot be used, with what to do about it."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, keep: int = 3, keep_steps=(),
                 read_only: bool = False) -> ocp.CheckpointManager:
  """Keeps the last `keep` checkpoints, and forever those at `keep_steps` (stage ends)."""
  policies = ocp.checkpoint_managers
  policy = policies.AnyPreservationPolicy([policies.LatestN(keep),
                                           policies.CustomSteps(list(keep_steps))])
  options = ocp.CheckpointManagerOptions(preservation_policy=None if read_only else policy,
                                         create=not read_only,
                                         read_only=read_only, enable_async_checkpointing=True)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, config,
         force: bool = False):
  """Start an async save of the state, the data iterator position and the config."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      config=ocp.args.JsonSave(config.to_dict())), force=force)


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
    path = os.path.join(str(manager.directory), str(step))
    raise CheckpointError(
        f"Could not restore the checkpoint at {path}: {type(e).__name__}: {e}\n"
        f"If it is damaged, delete that step directory to resume from an earlier one; if the "
        f"config changed (network, method), run with the config the checkpoint was written "
        f"with (saved in {path}/config).") from e
  return step, restored["state"]


def read_config(workdir: str) -> dict:
  """The config saved with the latest checkpoint of `workdir` (a dict); errors if none."""
  manager = require_checkpoint(workdir)
  step = manager.latest_step()
  return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def require_checkpoint(workdir: str) -> ocp.CheckpointManager:
  """A read-only manager over `workdir`'s checkpoints, or a clear error if there are none."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f"No checkpoint directory {directory}: train a model there first "
                          f"(python main.py --mode=train --workdir={workdir} --config=...).")
  manager = make_manager(workdir, read_only=True)
  if manager.latest_step() is None:
    raise CheckpointError(f"{directory} holds no finished checkpoint (an interrupted first "
                          f"save leaves none): train there first, or point --workdir elsewhere.")
  return manager
