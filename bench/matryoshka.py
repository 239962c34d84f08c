"""Matryoshka Diffusion vs a plain UNet at the same top resolution: step cost and training
steps to a given sample quality (the paper's claim: fewer training steps, Sec. 4).

  python -m bench.matryoshka [--preset=fashion_mnist] [--small] [--timing_only]
      [--steps=4000] [--eval_every=500] [--fd_target=20] [--workdir=/tmp/bench_matryoshka]

1. Step time: one jitted train step of configs/teacher.py:<preset> and of
   configs/matryoshka.py:<preset> at the same batch, measured in one run (column vs_unet).
   The same ratio is a row of bench/distill_step.py.
2. Training cost: both runs train in `workdir` (resuming), stopping every `eval_every` steps to
   draw `num_samples` 64-step DDIM samples of their EMA (the highest resolution for
   Matryoshka, from the same noise as the UNet's) and take their FD-<dataset> (the dataset
   classifier's Frechet distance, eval/quality.py). The table lists FD by step and the first
   step at which each run reaches `fd_target`.

--small divides every channel width by 4 and uses batch 64, so the fashion_mnist comparison
fits a 2-core CPU (UNet ch 16; Matryoshka inner ch 16, outer shell ch 8; both keep their
presets' depth, learning rate and schedule). Measured there (README, Benchmarks):
  python -m bench.matryoshka --preset=fashion_mnist --small --steps=2000 --num_samples=500 \
      --sample_steps=32
"""
import os

from absl import app, flags

from bench.step_timing import print_table, time_train_step
from configs import matryoshka, teacher
from eval.quality import Entry, Options, evaluate
from training.trainer import Trainer

flags.DEFINE_string("preset", "fashion_mnist", "Preset of configs/{teacher,matryoshka}.py.")
flags.DEFINE_bool("small", False, "A quarter of the channel widths and batch 64 (CPU-sized).")
flags.DEFINE_bool("timing_only", False, "Only the step-time comparison.")
flags.DEFINE_integer("timing_steps", 5, "Timed steps per model.")
flags.DEFINE_integer("steps", 4000, "Training steps of each run.")
flags.DEFINE_integer("eval_every", 500, "Steps between FD evaluations.")
flags.DEFINE_integer("num_samples", 1000, "Samples per FD evaluation.")
flags.DEFINE_integer("sample_steps", 64, "DDIM steps of the evaluated samples.")
flags.DEFINE_float("fd_target", 20.0, "The FD whose first crossing is reported.")
flags.DEFINE_string("workdir", "/tmp/bench_matryoshka", "Where the two runs train.")
FLAGS = flags.FLAGS


def divide_widths(model, divisor: int):
  """Every `ch` in a (possibly nested) model section divided by `divisor`."""
  model.ch //= divisor
  if "inner" in model:
    divide_widths(model.inner, divisor)


def configs() -> dict:
  runs = {"unet": teacher.get_config(FLAGS.preset),
          "matryoshka": matryoshka.get_config(FLAGS.preset)}
  for config in runs.values():
    if FLAGS.small:
      divide_widths(config.model, 4)
      config.batch_size = 64
    config.num_train_steps = FLAGS.steps
    config.checkpoint_every_steps = FLAGS.eval_every
    config.sample_every_steps = FLAGS.eval_every
    config.keep_checkpoints = FLAGS.steps // FLAGS.eval_every + 1
  return runs


def step_times(runs) -> list[dict]:
  rows = [dict(model=name, **time_train_step(config, {"num_steps": FLAGS.sample_steps}, None,
                                              FLAGS.timing_steps))
          for name, config in runs.items()]
  for row in rows:
    row["vs_unet"] = round(row["step_s"] / rows[0]["step_s"], 2)
  return rows


def steps_to_fd(runs) -> list[dict]:
  """FD-<dataset> every eval_every steps of each run, and the first step reaching fd_target."""
  rows = []
  options = Options(num_samples=FLAGS.num_samples, metrics=("fd_dataset",))
  for name, config in runs.items():
    workdir = os.path.join(FLAGS.workdir, f"{FLAGS.preset}_{name}")
    Trainer(config, workdir).run()
    steps = range(FLAGS.eval_every, FLAGS.steps + 1, FLAGS.eval_every)
    entries = [Entry(workdir, FLAGS.sample_steps, step=s, name=f"{name}@{s}") for s in steps]
    fds = [next(v for k, v in row.items() if k.startswith("FD-"))
           for row in evaluate(entries, options)]
    reached = next((s for s, fd in zip(steps, fds) if fd <= FLAGS.fd_target), None)
    rows.append(dict(model=name, **{f"fd@{s}": round(fd, 2) for s, fd in zip(steps, fds)},
                     steps_to_target=reached if reached is not None else f">{FLAGS.steps}"))
  return rows


def main(argv):
  del argv
  runs = configs()
  timing = step_times(runs)
  print_table(timing, ["model", "batch_size", "compile_s", "step_s", "vs_unet", "params",
                       "memory_mb"])
  if FLAGS.timing_only:
    return
  rows = steps_to_fd(runs)
  print(f"FD target {FLAGS.fd_target}:")
  print_table(rows, list(rows[0]))


if __name__ == "__main__":
  app.run(main)
