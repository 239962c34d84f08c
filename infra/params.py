"""Reading trained parameters out of a workdir's checkpoints, and checking a tree's shapes."""
import jax
import orbax.checkpoint as ocp

from infra import checkpoint
from infra.mesh import make_mesh, replicated


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
