r"""The quality-vs-steps report of a teacher and its distilled students.

  python -m bench.quality --teacher=runs/digits --students=runs/digits_pd[,...] --out=runs/report
      [--num_samples=500] [--steps=1,2,4,8,16,32,64] [--reference_steps=256]
      [--metrics=fd_dataset,fidelity,fid] [--reference_images=1000]

Rows (eval/quality.py): the teacher at each --steps with --sampler plus its --reference_steps
DDIM reference; each student at every stage-end checkpoint its workdir keeps, with the stage's
own step count N (from the method's `stages()`; a progressive run keeps them all when
keep_period = steps_per_stage). Every row is drawn from the same noise, and fidelity is against
the teacher's reference samples. Writes to --out:
  report.md            the table (steps, NFE, wall time per image, FD-<dataset>, PSNR, ...)
  report.json          the rows and the settings
  quality_vs_steps.png each metric against steps (log2 axis), one line per model
  grids/<row>.png      the first 64 samples of each row

  python -m bench.quality --merge=runs/a/report/report.json,runs/b/report/report.json --out=DIR

merges two (or more) reports into one table, refusing reports whose metric settings (sample
count, seed, metrics, reference steps and reference statistics) differ.
"""
import os

import jax
from absl import app, flags

import distillation  # noqa: F401  (registers the methods the students' configs name)
from eval import quality_table
from eval.report import merge_reports, quality_report

flags.DEFINE_string("teacher", None, "Workdir of the teacher.")
flags.DEFINE_list("students", [], "Workdirs of distilled students (e.g. progressive runs).")
flags.DEFINE_string("out", None, "Output directory of the report.")
flags.DEFINE_integer("num_samples", 500, "Samples per row.")
flags.DEFINE_integer("batch_size", 250, "Sampling batch size (global).")
flags.DEFINE_list("steps", ["1", "2", "4", "8", "16", "32", "64"], "Teacher step counts.")
flags.DEFINE_integer("reference_steps", 256, "DDIM steps of the teacher's fidelity reference.")
flags.DEFINE_string("sampler", "ddim", "Sampler of every row but the reference.")
flags.DEFINE_list("guidance_weights", ["0"], "Guidance weights (class-conditional models).")
flags.DEFINE_list("metrics", ["fd_dataset", "fidelity"], "Metrics: fd_dataset, fidelity, fid.")
flags.DEFINE_string("classifier_dir", "", "Dataset classifier directory ('' = the default).")
flags.DEFINE_integer("classifier_steps", 500, "Training steps if the classifier is missing.")
flags.DEFINE_string("inception_weights", "", "FID Inception .npz ('' = the default path).")
flags.DEFINE_integer("seed", 0, "Seed of the shared noise.")
flags.DEFINE_integer("reference_images", 0, "FD / FID statistics from the first N images of "
                     "the train split (0 = all of it; the fashion_mnist_cpu report's: 1000).")
flags.DEFINE_bool("clip_x", True, "Clip x_hat to [-1, 1] at every sampler step (every row).")
flags.DEFINE_string("compilation_cache", os.path.expanduser("~/.cache/diffusion_distillation_jax"),
                    "Persistent XLA compilation cache directory ('' to disable).")
flags.DEFINE_list("merge", [], "report.json files to merge into one table in --out (refused "
                  "when their metric settings differ); no evaluation.")
flags.mark_flags_as_required(["out"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  if FLAGS.merge:
    rows = merge_reports(FLAGS.merge, FLAGS.out)
    print(quality_table.format_table(rows))
    print(f"wrote {FLAGS.out}/report.md, report.json and quality_vs_steps.png")
    return
  if not FLAGS.teacher:
    raise app.UsageError("--teacher is required (or --merge=<report.json>,<report.json>).")
  rows = quality_report(FLAGS.teacher, FLAGS.students, FLAGS.out, [int(n) for n in FLAGS.steps],
                        FLAGS.sampler, [float(w) for w in FLAGS.guidance_weights],
                        num_samples=FLAGS.num_samples, batch_size=FLAGS.batch_size,
                        reference_steps=FLAGS.reference_steps, metrics=FLAGS.metrics,
                        classifier_dir=FLAGS.classifier_dir,
                        classifier_steps=FLAGS.classifier_steps,
                        inception_weights=FLAGS.inception_weights, seed=FLAGS.seed,
                        reference_images=FLAGS.reference_images,
                        clip_x=FLAGS.clip_x)
  print(quality_table.format_table(rows))
  print(f"wrote {FLAGS.out}/report.md, report.json, quality_vs_steps.png and grids/")


if __name__ == "__main__":
  app.run(main)
