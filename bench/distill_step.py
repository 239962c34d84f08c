"""Cost of a distillation step relative to a teacher training step, on one network.

  python -m bench.distill_step [--preset=digits] [--steps=10] [--batch_size=0]

Progressive distillation runs the teacher twice without gradient and the student
once with gradient; guided stage 2 runs two guided teacher steps (four network
evaluations, the conditional and unconditional branches batched together). BOOT
(data-free) runs the student once without gradient on B and once with gradient on 2B
(g(eps, s) and g(eps, 1)) and the teacher once on 2B ([z_hat_t; eps]), 4B when guided
(both branches): about 1 teacher + 3 student evaluations with one backward. The Denoising
Student runs the student once with gradient on stored pairs (no teacher: expect about 1x;
its one-off pair generation is timed by bench/offline_throughput.py). Consistency
distillation runs one teacher ODE step (1 network call with the 'ddim' solver, 2 with
'heun'), the target network once without gradient and the student once with gradient:
about 1 (2) teacher + 2 student evaluations with one backward. SiD (data-free) runs the
generator once with gradient, the teacher and the fake score at x_t (gradient to x_t), and
the fake score on generated images with gradient: 1 teacher (2 guided) + 3 network
evaluations, with backward passes through G, both score networks at x_t and the fake score
(parameters only through G and the fake score's own loss). Times
come from one run, reported as ratios to the teacher step (expect about 1.7x and
2.3x for progressive and guided), with each step's memory from XLA's memory analysis.

Matryoshka (configs/matryoshka.py, no teacher) trains a NestedUNet on every resolution at once:
its vs_teacher is the NestedUNet step over the plain UNet step at the same top resolution
(bench/matryoshka.py also measures the training steps each needs to reach a given FD).

Catch-up distillation (configs/catch_up.py, no teacher) is timed against its own baseline,
flow matching on the same network (column vs_flow): with k Runge-Kutta heads it adds, without
gradient, k - 1 sequential stage evaluations (k2, k3; k1 is the prediction itself) and one
call on the k-fold batch for the k targets, i.e. 2k - 1 forward passes of batch B in all
(1, 3, 5 for k = 1, 2, 3) on top of flow matching's forward and backward.
"""
import jax
from absl import app, flags

from bench.step_timing import print_table, time_train_step
from configs import (boot, catch_up, consistency, denoising_student, guided, matryoshka,
                     progressive, sid, teacher)
from diffusion.networks import build_network, init_params
from training.method import get_method

flags.DEFINE_string("preset", "digits",
                    "Preset of configs/{teacher,progressive,guided,boot,consistency,sid}.py.")
flags.DEFINE_integer("steps", 10, "Timed steps per method.")
flags.DEFINE_integer("batch_size", 0, "Global batch size (0 = the teacher preset's).")
FLAGS = flags.FLAGS


def random_teacher(config):
  """Teacher parameters of the config's network without the w-embedding (timing only)."""
  model = dict(config.model, guidance=False)
  return init_params(build_network(model), jax.random.PRNGKey(1), config.data.shape)


def unguided(config):
  """A BOOT config whose teacher runs without guidance (w = 0, one branch)."""
  config.model.guidance = False
  config.boot.guidance_weight = 0.0
  return config


def with_solver(config, solver):
  """A consistency config whose teacher step is `solver`."""
  config.consistency.teacher_solver = solver
  return config


def catch_up_config(order: int, method: str = "catch_up"):
  """The preset's catch-up run with `order` Runge-Kutta heads (or its flow-matching baseline)."""
  config = catch_up.get_config(FLAGS.preset)
  config.cud.order, config.method = order, method
  return config


def main(argv):
  del argv
  configs = {"teacher": teacher.get_config(FLAGS.preset),
             "progressive": progressive.get_config(FLAGS.preset),
             "guided stage 2": guided.get_config(FLAGS.preset),
             "boot": unguided(boot.get_config(FLAGS.preset)),
             "boot guided": boot.guided_student(boot.get_config(FLAGS.preset)),
             "denoising student": denoising_student.get_config(FLAGS.preset),
             "consistency ddim": with_solver(consistency.get_config(FLAGS.preset), "ddim"),
             "consistency heun": with_solver(consistency.get_config(FLAGS.preset), "heun"),
             "sid": sid.get_config(FLAGS.preset),
             "sid guided": boot.guided_student(sid.get_config(FLAGS.preset))}
  configs["flow matching"] = catch_up_config(1, "flow_matching")
  configs.update({f"catch-up k={k}": catch_up_config(k) for k in (1, 2, 3)})
  configs["matryoshka"] = matryoshka.get_config(FLAGS.preset)
  batch = FLAGS.batch_size or configs["teacher"].batch_size
  configs["teacher"].model.num_classes = configs["guided stage 2"].model.num_classes
  rows = []
  for name, config in configs.items():
    config.batch_size = batch
    args = {"num_steps": 8}
    if name == "guided stage 2":
      args["phase"] = 1
    if name.startswith(("boot", "consistency")):
      args = {"num_steps": 1, "grid": 8}
    if name == "denoising student" or name.startswith("sid"):
      args = {"num_steps": 1}
    teacher_params = random_teacher(config) if get_method(config).needs_teacher else None
    rows.append(dict(method=name, **time_train_step(config, args, teacher_params,
                                                    FLAGS.steps)))
  for row in rows:
    row["vs_teacher"] = round(row["step_s"] / rows[0]["step_s"], 2)
  flow = next(row for row in rows if row["method"] == "flow matching")
  for row in rows:   # catch-up rows against their own baseline, flow matching
    row["vs_flow"] = (round(row["step_s"] / flow["step_s"], 2)
                      if row["method"].startswith(("flow", "catch-up")) else "")
  print_table(rows, ["method", "batch_size", "compile_s", "step_s", "vs_teacher", "vs_flow",
                     "memory_mb"])


if __name__ == "__main__":
  app.run(main)
