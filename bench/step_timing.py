"""Timing and memory of one jitted train step (shared by the benchmarks)."""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import distillation  # noqa: F401  (registers the methods)
from infra.mesh import make_mesh, replicated, shard_batch
from training.method import get_method
from training.optimizer import make_optimizer
from training.step import init_state, train_step


def time_train_step(config, stage_args: dict, teacher_params=None, steps: int = 5) -> dict:
  """Compile time, seconds per step and memory of `config`'s jitted train step."""
  mesh = make_mesh()
  method, tx = get_method(config), make_optimizer(config.optim)
  rng = jax.random.PRNGKey(0)
  state = jax.jit(lambda teacher: init_state(method, tx, rng, rng, teacher),
                  out_shardings=replicated(mesh))(teacher_params)
  step_fn = jax.jit(lambda s, b, st: train_step(method, tx, config.optim, s, b, st),
                    donate_argnums=0)
  shape = (config.batch_size,) + tuple(config.data.shape)
  batch = shard_batch(mesh, {"image": np.random.uniform(-1, 1, shape).astype(np.float32),
                             "label": np.zeros(shape[:1], np.int32),
                             "index": np.arange(shape[0], dtype=np.int32),
                             "noise": np.random.normal(size=shape).astype(np.float32)})
  stage = {k: jnp.asarray(v) for k, v in
           dict(stage_args, num_updates=10**6, first_step=0, run_updates=10**6).items()}
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch, stage).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batch, stage)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, stage)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / steps
  memory = compiled.memory_analysis()
  return dict(batch_size=config.batch_size, compile_s=round(compile_s, 2),
              step_s=round(step_s, 4), images_per_s=round(config.batch_size / step_s, 1),
              memory_mb=round((memory.argument_size_in_bytes + memory.output_size_in_bytes +
                               memory.temp_size_in_bytes - memory.alias_size_in_bytes) / 2**20, 1),
              params=int(sum(x.size for x in jax.tree.leaves(state.params))),
              devices=jax.device_count())


def print_table(rows, columns):
  print("".join(f"{c:>14}" for c in columns))
  for r in rows:
    print("".join(f"{r[c]!s:>14}" for c in columns))
  print(json.dumps(rows))
