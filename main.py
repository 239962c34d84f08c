"""Entry point: train, sample or evaluate diffusion models and distilled students.

  python main.py --config=configs/teacher.py:digits --workdir=runs/digits
  python main.py --mode=sample --workdir=runs/digits --config.sample.num_steps=16

Any config key can be overridden with --config.<key>=<value>; an unknown key is an error.

Exit status: 0 when done; EXIT_STOPPED_EARLY (75, sysexits' EX_TEMPFAIL: "try again") when a
SIGTERM (a preemption) stopped training or a pipeline part before its end, with every
checkpoint saved and no later pipeline part started: rerun the same command to continue.
"""
import logging as std_logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/teacher.py",
                                "Config file and preset, e.g. configs/teacher.py:digits.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_bool("distributed", False,
                  "Call jax.distributed.initialize() first (multi-host TPU/GPU; on Cloud TPU "
                  "it finds the coordinator by itself).")
flags.DEFINE_string("coordinator_address", None,
                    "With --distributed: host:port of process 0 (default: JAX_COORDINATOR_ADDRESS "
                    "or what jax detects on Cloud TPU, SLURM, ...).")
flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/diffusion_distillation_jax"),
                    "Persistent XLA compilation cache directory ('' to disable).")
flags.DEFINE_string("source", None,
                    "--mode=import: a diffusers UNet2DModel folder (config.json, "
                    "diffusion_pytorch_model.safetensors, scheduler_config.json).")
flags.mark_flags_as_required(["workdir"])

EXIT_STOPPED_EARLY = 75


class QuietLibraries(std_logging.Filter):
  """Drop the INFO chatter of orbax (several lines per checkpoint); keep its warnings."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(QuietLibraries())
  if FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  logging.info("JAX process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  import commands  # noqa: F401  (registers the methods)
  from training.trainer import StoppedEarly
  try:
    MODES[FLAGS.mode](FLAGS.config, FLAGS.workdir)
  except StoppedEarly as e:
    logging.warning("%s", e)
    sys.exit(EXIT_STOPPED_EARLY)


def train(config, workdir):
  from training.trainer import train as run
  run(config, workdir)


def sample(config, workdir):
  from commands.sample import sample_from_workdir
  sample_from_workdir(workdir, config.sample)


def evaluate(config, workdir):
  from commands.evaluate import evaluate_workdir
  evaluate_workdir(workdir, config.eval)


def pairs(config, workdir):
  from commands.pairs import write_offline_data
  write_offline_data(config, workdir)


def plan(config, workdir):
  from commands.plan import DoesNotFit, plan_run
  from infra.topology import NoLibtpuError
  try:
    plan_run(config, workdir)
  except (DoesNotFit, NoLibtpuError) as e:
    sys.exit(str(e))


def pipeline(config, workdir):
  if "parts" not in config:
    raise app.UsageError("--mode=pipeline needs --config=configs/pipeline.py[:preset].")
  from commands.pipeline import run_pipeline
  run_pipeline(config, workdir)


def import_diffusers(config, workdir):
  from commands.import_diffusers import import_teacher
  import_teacher(FLAGS.source, config, workdir)


MODES = {"train": train, "sample": sample, "eval": evaluate, "pairs": pairs,
         "pipeline": pipeline, "import": import_diffusers, "plan": plan}
flags.DEFINE_enum("mode", "train", list(MODES),
                  "What to do (pairs: write the offline teacher samples a method such as "
                  "denoising_student trains on, resumable; pipeline: teacher, distillation and "
                  "report; use configs/pipeline.py; import: a diffusers UNet2DModel teacher "
                  "from --source into a new workdir; plan: compile for a TPU topology with "
                  "libtpu and print per-chip memory and FLOPs, --config.plan.*).")

FLAGS = flags.FLAGS

if __name__ == "__main__":
  app.run(main)
