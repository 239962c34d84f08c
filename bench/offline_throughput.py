"""Throughput of the shared offline writer on Denoising Student pairs: pairs/s and teacher
network evaluations/s (the teacher's DDIM sampler from eps, shards written and renamed).

  python -m bench.offline_throughput [--preset=digits] [--num_pairs=4096] \
      [--teacher_workdir=runs/digits] [--generation_batch_size=0] [--teacher_steps=0]

Without --teacher_workdir the teacher is the preset's network with random parameters (the
cost is the same). The first shard includes compilation, so the rate is also reported from
the second shard on. Prints one JSON line (cost.json of the run plus the steady rate).
"""
import json
import tempfile
import time

import jax
from absl import app, flags

from configs import denoising_student
import distillation  # noqa: F401  (registers the methods)
from diffusion.networks import init_params
from infra.params import load_params
from training import offline
from training.method import get_method

flags.DEFINE_string("preset", "digits", "Preset of configs/denoising_student.py.")
flags.DEFINE_integer("num_pairs", 4096, "Training pairs to write (plus 1/8 of it held out).")
flags.DEFINE_string("teacher_workdir", "", "A trained teacher ('' = random parameters).")
flags.DEFINE_integer("generation_batch_size", 0, "Rows per teacher call (0 = the preset's).")
flags.DEFINE_integer("teacher_steps", 0, "DDIM steps (0 = the preset's).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = denoising_student.get_config(FLAGS.preset)
  d = config.distill
  d.generation_batch_size = FLAGS.generation_batch_size or min(d.generation_batch_size,
                                                               FLAGS.num_pairs)
  d.teacher_steps = FLAGS.teacher_steps or d.teacher_steps
  d.num_pairs, d.num_heldout = FLAGS.num_pairs, FLAGS.num_pairs // 8
  d.shard_size = d.generation_batch_size
  method = get_method(config)
  if FLAGS.teacher_workdir:
    teacher, _, _ = load_params(FLAGS.teacher_workdir)
  else:
    teacher = init_params(method.network, jax.random.PRNGKey(0), config.data.shape)
  times = []
  progress = lambda rows, shard: times.append((time.perf_counter(), rows))
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    cost = offline.write(method.offline_data(), teacher, directory, progress=progress)
    wall = time.perf_counter() - start
  steady_rows = sum(rows for _, rows in times[1:])
  steady_s = times[-1][0] - times[0][0]
  steady = steady_rows / steady_s if steady_s > 0 else float("nan")
  result = dict(preset=FLAGS.preset, teacher_steps=d.teacher_steps,
                generation_batch_size=d.generation_batch_size, devices=jax.local_device_count(),
                wall_s=round(wall, 2), pairs_per_s=round(cost["rows_per_second"], 1),
                steady_pairs_per_s=round(steady, 1),
                steady_teacher_evaluations_per_s=round(steady * cost["evaluations_per_example"], 1),
                rows=cost["rows"], evaluations=cost["evaluations"])
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
