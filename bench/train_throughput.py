"""Train-step throughput and compile time of teacher presets on this machine.

  python -m bench.train_throughput [--presets=digits,cifar10] [--steps=5] [--batch_size=0]

For each preset: compile time of the jitted train step, then images/s over `steps`
timed steps (after one warm-up), with the preset's network on random data, and the
step's memory (arguments + outputs + temporaries - aliased, from XLA's memory
analysis). Prints a table and the same numbers as JSON. `--batch_size` overrides
the presets' batch (cifar10's 128 at full width takes many seconds per step on a
2-core CPU).
"""
from absl import app, flags

from bench.step_timing import print_table, time_train_step
from configs.teacher import get_config

flags.DEFINE_list("presets", ["digits", "cifar10"], "Teacher presets to measure.")
flags.DEFINE_integer("steps", 5, "Timed steps per preset.")
flags.DEFINE_integer("batch_size", 0, "Global batch size (0 = the preset's).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  rows = []
  for preset in FLAGS.presets:
    config = get_config(preset)
    config.batch_size = FLAGS.batch_size or config.batch_size
    rows.append(dict(preset=preset, **time_train_step(
        config, {"num_steps": config.sample.num_steps}, steps=FLAGS.steps)))
  print_table(rows, ["preset", "batch_size", "params", "compile_s", "step_s", "images_per_s",
                     "memory_mb"])


if __name__ == "__main__":
  app.run(main)
