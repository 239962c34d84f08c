"""A run's programs as shapes: the teacher, the train state and a batch as
jax.ShapeDtypeStructs, so `--mode=plan` compiles the trainer's own step without data, a
teacher checkpoint or the devices it plans for."""
import functools

import jax
import jax.numpy as jnp

from infra import checkpoint
from training.step import init_state


def teacher_shapes(config, method):
  """The teacher's EMA parameters as shapes: from the latest checkpoint's metadata of the
  workdir named by the method's `teacher_workdir_key` when it holds one, else from the config
  (`Method.teacher_shapes`); None for a method without a teacher."""
  if not method.needs_teacher:
    return None
  section, name = method.teacher_workdir_key.split(".")
  workdir = config[section][name]
  if workdir and checkpoint.checkpoint_dir(workdir).is_dir():
    manager = checkpoint.require_checkpoint(workdir)
    saved = checkpoint.state_metadata(manager, manager.latest_step())["ema_params"]
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved,
                        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
  return method.teacher_shapes()


def state_shapes(config, method, tx, teacher):
  """The TrainState of a fresh run as shapes (the trainer's `init_state`, traced only)."""
  keys = jax.random.split(jax.random.PRNGKey(config.seed))
  return jax.eval_shape(functools.partial(init_state, method, tx), *keys, teacher)


def batch_shapes(config, method, teacher) -> dict:
  """One global training batch as shapes, as the trainer's iterator yields it: the offline
  generator's keys, the example counter of a data-free method, or image and label."""
  size = config.batch_size
  offline = method.offline_data()
  if offline is not None:
    return jax.eval_shape(offline.generate, teacher, jax.random.PRNGKey(0), size)
  if not method.needs_data:
    return {"index": jax.ShapeDtypeStruct((size,), jnp.int32)}
  return {"image": jax.ShapeDtypeStruct((size,) + tuple(config.data.shape), jnp.float32),
          "label": jax.ShapeDtypeStruct((size,), jnp.int32)}

