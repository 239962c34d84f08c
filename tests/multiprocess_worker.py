"""One process of tests/test_pod.py's two-process run: resume the tiny teacher in a shared
workdir to `steps` and write this process's copy of the final parameters (and the step it
resumed from) as .npz.

  python tests/multiprocess_worker.py <coordinator host:port> <num processes> <process id>
      <workdir> <steps> <out.npz>

Like `main.py --distributed`, with the process count and id given (see the README's
localhost recipe); the environment sets 4 CPU devices per process and gloo collectives.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(coordinator, num_processes, process_id, workdir, steps, out):
  jax.config.update("jax_compilation_cache_dir",
                    os.path.expanduser("~/.cache/diffusion_distillation_jax"))
  jax.distributed.initialize(coordinator, int(num_processes), int(process_id))
  import distillation  # noqa: F401  (registers the methods, as main.py's commands import does)
  from tests.tiny_config import tiny_teacher_config
  from training.trainer import Trainer
  trainer = Trainer(tiny_teacher_config(num_train_steps=int(steps)), workdir)
  start = int(trainer.state.step.addressable_data(0))
  state = trainer.run()
  leaves = jax.tree_util.tree_leaves_with_path(state.params)
  # Parameters are replicated: this process's first local copy of each.
  np.savez(out, **{jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
                   for k, v in leaves}, start=start, step=np.asarray(state.step.addressable_data(0)))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
