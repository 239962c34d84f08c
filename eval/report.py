"""The quality-vs-steps report of a teacher and its distilled students (library of
`python -m bench.quality` and of the pipeline's last part).

Rows (eval/quality.py): the teacher at each step count with the sampler plus its
reference_steps DDIM reference; each student at every stage-end checkpoint its workdir
keeps, with the stage's own step count N (from the method's `stages()`; a progressive run
keeps every stage end). Every row is drawn from the same noise,
and fidelity is against the teacher's reference samples. Writes to out_dir:
  report.md            the table (steps, NFE, wall time per image, FD-<dataset>, PSNR, ...)
  report.json          the rows and the settings
  quality_vs_steps.png each metric against steps (log2 axis), one line per model
  grids/<row>.png      the first 64 samples of each row
"""
import dataclasses
import json
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from eval import quality, quality_table, sample_programs  # noqa: E402
from training import checkpoint  # noqa: E402
from training.method import get_method  # noqa: E402

PLOTTED = ("FD-", "fidelity_psnr", "FID")


def teacher_entries(workdir: str, steps, reference_steps: int, sampler: str, weights) -> list:
  """The teacher's latest checkpoint at each of `steps` with `sampler`, then its DDIM reference."""
  config = sample_programs.sampling_config(checkpoint.read_config(workdir), sampler, 0.0)
  weights = sample_programs.guidance_weights_for(config, weights)
  entries = [quality.Entry(workdir, n, sampler, w, name="teacher")
             for w in weights for n in sorted(set(steps))]
  references = [quality.Entry(workdir, reference_steps, "ddim", w, name="teacher")
                for w in weights]
  return entries + [e for e in references if e not in entries]


def student_entries(workdir: str, sampler: str, weights) -> list:
  """One entry per stage whose final checkpoint the workdir holds, with the stage's N."""
  saved = checkpoint.read_config(workdir)
  config = sample_programs.sampling_config(saved, sampler, 0.0)
  kept = set(checkpoint.require_checkpoint(workdir).all_steps())
  stages = get_method(config).stages()
  ends = np.cumsum([stage.num_updates for stage in stages]).tolist()
  name = os.path.basename(os.path.normpath(workdir))
  entries = []
  for stage, end in zip(stages, ends):
    if end not in kept:
      logging.warning("%s keeps no checkpoint at the end of stage %r (step %d): skipped.",
                      workdir, stage.name, end)
      continue
    entries += [quality.Entry(workdir, int(stage.args["num_steps"]), sampler, w, end, name=name)
                for w in sample_programs.guidance_weights_for(config, weights)]
  return entries


def plot(rows, path: str) -> str:
  """One panel per metric (FD-<dataset> and FID on a log scale, fidelity PSNR; else the time
  per image) against steps, one line per (model, sampler, w); non-finite values (PSNR of the
  reference itself) are left out."""
  columns = quality_table.table_columns(rows)
  metrics = [k for k in columns if k.startswith(PLOTTED)] or ["seconds_per_image"]
  lines = {}
  for row in rows:
    lines.setdefault((row["model"], row["sampler"], row["guidance_weight"]), []).append(row)
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for (model, sampler, w), line in lines.items():
      points = sorted((r["steps"], r.get(metric, np.nan)) for r in line)
      x, y = zip(*[(n, v if np.isfinite(v) else np.nan) for n, v in points])
      ax.plot(x, y, marker="o", label=f"{model} ({sampler}" + (f", w={w:g})" if w else ")"))
    ax.set_xscale("log", base=2)
    if metric.startswith(("FD-", "FID")):
      ax.set_yscale("log")
      for axis_format in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_format(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(quality_table.HEADERS.get(metric, metric))
    ax.grid(True, alpha=0.3)
  axes[0][0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def markdown(rows, teacher_workdir: str, options: quality.Options, out_dir: str,
             plot_name: str) -> str:
  """The report: settings, the table, the plot and links to the sample grids."""
  grids = "\n".join(f"- [{quality_table.row_name(r)}]({os.path.relpath(r['grid'], out_dir)})"
                    for r in rows if "grid" in r)
  return (f"# Quality vs sampling steps\n\nTeacher: `{teacher_workdir}`. {options.num_samples} "
          f"samples per row from the same noise (seed {options.seed}); fidelity against the "
          f"teacher's {options.reference_steps}-step DDIM samples; NFE = network evaluations "
          f"per sample; s/image after compilation.\n\n{quality_table.format_table(rows)}\n\n"
          f"![quality vs steps]({plot_name})\n\nSample grids:\n{grids}\n")


def quality_report(teacher_workdir: str, student_workdirs, out_dir: str, num_samples: int = 500,
                   batch_size: int = 250, steps=(1, 2, 4, 8, 16, 32, 64),
                   reference_steps: int = 256, sampler: str = "ddim", guidance_weights=(0.0,),
                   metrics=("fd_dataset", "fidelity"), classifier_dir: str = "",
                   classifier_steps: int = 500, inception_weights: str = "", seed: int = 0,
                   mesh=None) -> list[dict]:
  """Evaluate the teacher and students (see the module docstring), write the report files to
  `out_dir` and return the rows."""
  options = quality.Options(num_samples=num_samples, batch_size=batch_size,
                            metrics=tuple(metrics), reference_steps=reference_steps,
                            classifier_dir=classifier_dir, classifier_steps=classifier_steps,
                            inception_weights=inception_weights, seed=seed,
                            grid_dir=os.path.join(out_dir, "grids"))
  entries = teacher_entries(teacher_workdir, steps, reference_steps, sampler, guidance_weights)
  for workdir in student_workdirs:
    entries += student_entries(workdir, sampler, guidance_weights)
  rows = quality.evaluate(entries, options, teacher_workdir, mesh)
  if jax.process_index() != 0:   # every host evaluates (sharded); one writes
    return rows
  os.makedirs(out_dir, exist_ok=True)
  plot(rows, os.path.join(out_dir, "quality_vs_steps.png"))
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(dict(teacher=teacher_workdir, students=list(student_workdirs),
                   options=dataclasses.asdict(options), rows=rows), f, indent=1)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(rows, teacher_workdir, options, out_dir, "quality_vs_steps.png"))
  return rows
