"""A process of the offline-writer tests: writes analytic-teacher DDIM pairs with
training.offline.write, alone or as one of several jax.distributed processes on localhost.

  python -m tests.offline_worker DIR [PROCESS_ID NUM_PROCESSES PORT] [--pause=SECONDS]

--pause sleeps after each shard, so a test can interrupt the run midway.
"""
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402

from diffusion.analytic import analytic_denoiser, gaussian  # noqa: E402
from diffusion.processes import get_process  # noqa: E402
from sampling import get_sampler  # noqa: E402
from training.offline import OfflineData, write  # noqa: E402

DATA = gaussian([1.0, -0.5, 0.0, 2.0], [0.5, 0.2, 1.0, 0.1])
PROCESS = get_process("cosine")


def pairs(params, rng, n):
  """(noise, 8-step DDIM sample of the analytic teacher, label 0) rows."""
  noise = jax.random.normal(rng, (n, 4))
  x0 = get_sampler("ddim")(analytic_denoiser(DATA, PROCESS), params, noise, process=PROCESS,
                           num_steps=8)
  return {"noise": noise, "image": x0, "label": jax.numpy.zeros((n,), jax.numpy.int32)}


SPEC = OfflineData(generate=pairs, num_train=200, num_heldout=40, shard_size=24, batch_size=8,
                   evaluations_per_example=8, seed=3, identity={"teacher": "analytic"})


def main(argv):
  pause = None
  args = [a for a in argv[1:] if not a.startswith("--pause=")]
  for a in argv[1:]:
    if a.startswith("--pause="):
      pause = float(a.split("=")[1])
  directory = args[0]
  if len(args) > 1:
    process_id, count, port = int(args[1]), int(args[2]), int(args[3])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=count, process_id=process_id)

  def progress(rows, shard):
    print(f"wrote {shard}", flush=True)
    time.sleep(pause)

  write(SPEC, {}, directory, progress=progress if pause is not None else None)
  print("done", flush=True)


if __name__ == "__main__":
  main(sys.argv)
