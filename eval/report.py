"""The quality-vs-steps report of a teacher and its distilled students (library of
`python -m bench.quality` and of the pipeline's last part).

Rows (eval/quality.py): the teacher at each step count with the sampler plus its
reference_steps DDIM reference; each student at every stage-end checkpoint its workdir
keeps, with the stage's own step count N (from the method's `stages()`; a progressive run
keeps every stage end). Every row is drawn from the same noise,
and fidelity is against the teacher's reference samples. Writes to out_dir:
  report.md            the table (steps, NFE, wall time per image, FD-<dataset>, PSNR, ...)
  report.json          the rows and the settings
  quality_vs_steps.png each metric against NFE (log2 axis), one line per model
  quality_vs_cost.png  FD / FID against each part's training seconds, a point per row
                       (pipeline reports, whose rows carry their part's training cost)
  grids/<row>.png      the first 64 samples of each row
out_dir may be a bucket (any etils.epath path). The header names the dataset split of the
FD / FID reference statistics and its number of images.
"""
import dataclasses
import io
import itertools
import json
import os
from typing import Optional

import jax
import matplotlib
from etils import epath

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from eval import quality, quality_table, sample_programs  # noqa: E402
from infra import checkpoint  # noqa: E402
from sampling import SAMPLERS  # noqa: E402
from training.method import get_method  # noqa: E402

PLOTTED = ("FD-", "fidelity_psnr", "FID")


def teacher_entries(workdir: str, steps, reference_steps: int, sampler: str, weights,
                    name: str = "teacher") -> list:
  """The teacher's latest checkpoint at each of `steps` with `sampler`, then its DDIM reference."""
  config = sample_programs.sampling_config(checkpoint.read_config(workdir), sampler, 0.0)
  weights = sample_programs.guidance_weights_for(config, weights)
  entries = [quality.Entry(workdir, n, sampler, w, name=name)
             for w in weights for n in sorted(set(steps))]
  references = [quality.Entry(workdir, reference_steps, "ddim", w, name=name, reference=workdir)
                for w in weights]
  return entries + [e for e in references if e not in entries]


def student_entries(workdir: str, sampler: str, weights, name: str = "",
                    reference: str = "") -> list:
  """One entry per stage whose final checkpoint the workdir holds, with the stage's N; the
  last stage's is the best checkpoint (lowest held-out loss) of a run that keeps one."""
  saved = checkpoint.read_config(workdir)
  config = sample_programs.sampling_config(saved, sampler, 0.0)
  manager = checkpoint.require_checkpoint(workdir)
  kept = set(manager.all_steps())
  stages = get_method(config).stages()
  ends = np.cumsum([stage.num_updates for stage in stages]).tolist()
  best = checkpoint.best_step(manager)
  if best is not None and ends[-1] in kept:
    ends[-1] = best
  name = name or os.path.basename(os.path.normpath(workdir))
  entries = []
  for stage, end in zip(stages, ends):
    if end not in kept:
      logging.warning("%s keeps no checkpoint at the end of stage %r (step %d): skipped.",
                      workdir, stage.name, end)
      continue
    entries += [quality.Entry(workdir, int(stage.args["num_steps"]), sampler, w, end, name=name,
                              reference=reference)
                for w in sample_programs.guidance_weights_for(config, weights)]
  return entries


def model_entries(workdir: str, name: str, steps=(), samplers=("ddim",), weights=(0.0,),
                  reference: str = "", max_nfe: int = 0, last_stages: int = 0) -> list:
  """A model's rows: its latest checkpoint at each of `steps` with each sampler, or, with no
  `steps`, every stage end at the stage's own N (a distilled student; only the last
  `last_stages` of them when given); rows whose sampler needs more than `max_nfe` network
  evaluations are left out (when given); fidelity against `reference`'s samples ('' = the
  report's teacher)."""
  entries = []
  for sampler in samplers:
    if steps:
      config = sample_programs.sampling_config(checkpoint.read_config(workdir), sampler, 0.0)
      entries += [quality.Entry(workdir, n, sampler, w, name=name, reference=reference)
                  for w in sample_programs.guidance_weights_for(config, weights)
                  for n in sorted(set(steps))]
    else:
      stage_rows = student_entries(workdir, sampler, weights, name, reference)
      kept = sorted({e.step for e in stage_rows})[-last_stages:] if last_stages else None
      entries += [e for e in stage_rows if kept is None or e.step in kept]
  return [e for e in entries if not max_nfe or SAMPLERS[e.sampler].nfe(e.num_steps) <= max_nfe]


def _plain_log_labels(axis):
  """Plain numbers (700, 2000) on a log axis; the minor ticks labelled only as many as fit
  (all of them within a fraction of a decade, a few over one, none over more)."""
  axis.set_major_formatter(matplotlib.ticker.LogFormatter())
  axis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))


def _metric_axis(ax, metric: str):
  """FD / FID on a log scale with plain tick labels; the metric's name on the y axis."""
  if metric.startswith(("FD-", "FID")):
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
  ax.set_ylabel(quality_table.HEADERS.get(metric, metric))
  ax.grid(True, alpha=0.3)


def _save(fig, path: str) -> str:
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  epath.Path(path).write_bytes(png.getvalue())
  return path


def _colors(n: int):
  return itertools.cycle(plt.get_cmap("tab10" if n <= 10 else "tab20").colors)


def plot(rows, path: str) -> str:
  """One panel per metric (FD-<dataset> and FID on a log scale, fidelity PSNR; else the time
  per image) against network evaluations per sample (NFE), one line (and colour, up to 20) per
  (model, sampler, w), every method on one figure, the legend beside it; non-finite values
  (PSNR of the reference itself) are left out."""
  columns = quality_table.table_columns(rows)
  metrics = [k for k in columns if k.startswith(PLOTTED)] or ["seconds_per_image"]
  lines = {}
  for row in rows:
    lines.setdefault((row["model"], row["sampler"], row["guidance_weight"]), []).append(row)
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for color, ((model, sampler, w), line) in zip(_colors(len(lines)), lines.items()):
      points = sorted((r["nfe"], r.get(metric, np.nan)) for r in line)
      x, y = zip(*[(n, v if np.isfinite(v) else np.nan) for n, v in points])
      ax.plot(x, y, marker="o", color=color,
              label=f"{model} ({sampler}" + (f", w={w:g})" if w else ")"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("network evaluations per sample (NFE)")
    _metric_axis(ax, metric)
  axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))   # beside, not over, data
  return _save(fig, path)


def cost_points(rows, metric: str, cost: str) -> dict:
  """{model: [(cost, metric, NFE), ...]}: the rows that have a positive `cost` and a finite
  `metric`, in row order."""
  points = {}
  for r in rows:
    if r.get(cost) and np.isfinite(r.get(metric, np.nan)):
      points.setdefault(r["model"], []).append((r[cost], r[metric], r["nfe"]))
  return points


def plot_cost(rows, path: str, cost: str = "train_seconds") -> Optional[str]:
  """Quality against training cost: one panel per FD-<dataset> / FID column, a point per row
  (`cost_points`) at x = its part's `cost` (log axis; default the wall-clock seconds of the
  part's own training, a distillation's teacher not included), a colour per model, each point
  labelled with its NFE. None (nothing written) when no row has both `cost` and such a metric."""
  metrics = [k for k in quality_table.table_columns(rows) if k.startswith(("FD-", "FID"))]
  panels = {m: cost_points(rows, m, cost) for m in metrics}
  if not any(panels.values()):
    return None
  models = list(dict.fromkeys(m for points in panels.values() for m in points))
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
  for ax, (metric, points) in zip(axes[0], panels.items()):
    for color, model in zip(_colors(len(models)), models):
      for i, (x, y, nfe) in enumerate(points.get(model, ())):
        ax.scatter(x, y, color=color, label=None if i else model)
        ax.annotate(f"{nfe:g}", (x, y), textcoords="offset points", xytext=(4, 2),
                    fontsize=7, color=color)
    ax.set_xscale("log")
    _plain_log_labels(ax.xaxis)
    ax.set_xlabel(f"training cost: {quality_table.HEADERS.get(cost, cost)} (labels: NFE)")
    _metric_axis(ax, metric)
  axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
  return _save(fig, path)


def seed_summary(rows, seeds: dict) -> list[dict]:
  """A row per row of every seeded part (`seeds` = {copy: part}, commands/pipeline.py): its
  metric columns' mean and sample standard deviation (`<metric>_std`) over the part and its
  copies, `seeds` their number; rows of parts without copies are left out."""
  parts = set(seeds.values())
  groups = {}
  for row in rows:
    part = seeds.get(row["model"], row["model"])
    if part in parts:
      key = (part, row["checkpoint_step"], row["sampler"], row["steps"],
             row["guidance_weight"])
      groups.setdefault(key, []).append(row)
  metrics = [c for c in quality_table.table_columns(rows)
             if c.startswith("FD-") or c in quality_table.METRIC_COLUMNS]
  summary = []
  for (part, step, sampler, steps, w), group in groups.items():
    row = dict(model=part, checkpoint_step=step, sampler=sampler, steps=steps,
               guidance_weight=w, nfe=group[0]["nfe"], seeds=len(group))
    for metric in metrics:
      values = np.asarray([r[metric] for r in group if metric in r], np.float64)
      if values.size:
        row[metric] = float(np.mean(values))
        row[f"{metric}_std"] = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    summary.append(row)
  return summary


def reference_statistics(rows, split: str) -> str:
  """'the <split> split (<n> images)' of the FD / FID reference statistics of `rows`, or ''
  when no row has those metrics."""
  counts = sorted({row["reference_images"] for row in rows if "reference_images" in row})
  if not counts:
    return ""
  return f"the {split} split ({' / '.join(str(n) for n in counts)} images)"


def markdown(rows, title: str, settings: dict, out_dir: str, plot_name: str,
             cost_plot_name: Optional[str] = None, summary=()) -> str:
  """The report: settings, the table (and the `seed_summary` table), the plots and links to
  the sample grids."""
  grids = "\n".join(f"- [{quality_table.row_name(r)}]({os.path.relpath(r['grid'], out_dir)})"
                    for r in rows if "grid" in r)
  header = "\n".join(f"- {k}: {v}" for k, v in settings.items())
  statistics = reference_statistics(rows, settings.get("reference_split", "train"))
  if statistics:
    header += f"\n- FD / FID reference statistics: {statistics}"
  return (f"# {title}\n\nEvery row's samples come from the same noise; fidelity is against the "
          f"row's reference model's reference_steps-step DDIM samples; NFE = network "
          f"evaluations per sample; s/image after compilation.\n\n{header}\n\n"
          + (f"Mean ± standard deviation over {max(r['seeds'] for r in summary)} seeds of "
             f"each seeded part:\n\n{quality_table.format_spread_table(summary)}\n\n"
             f"Every run:\n\n" if summary else "") +
          f"{quality_table.format_table(rows)}\n\n![quality vs steps]({plot_name})\n\n"
          + (f"![quality vs training cost]({cost_plot_name})\n\n" if cost_plot_name else "") +
          f"Sample grids:\n{grids}\n")


def write_report(rows, options: quality.Options, out_dir: str, title: str,
                 settings: Optional[dict] = None, seeds=None, **extra) -> None:
  """report.md, report.json (rows, options, the metric settings (default: those of `options`),
  `extra`) and the plot in `out_dir`; process 0 writes. With `seeds` ({copy: part}) the
  report adds `seed_summary` and plots the first seed's rows only."""
  if jax.process_index() != 0:   # every host evaluates (sharded); one writes
    return
  settings = quality.metric_settings(options) if settings is None else settings
  directory = epath.Path(out_dir)
  directory.mkdir(parents=True, exist_ok=True)
  seeds = seeds or {}
  summary = seed_summary(rows, seeds) if seeds else []
  first_seed = [r for r in rows if r["model"] not in seeds]
  plot(first_seed, directory / "quality_vs_steps.png")
  cost_plot = plot_cost(first_seed, directory / "quality_vs_cost.png")
  (directory / "report.json").write_text(json.dumps(
      dict(extra, title=title, settings=settings, options=dataclasses.asdict(options),
           rows=rows, **(dict(seed_summary=summary) if seeds else {})), indent=1))
  (directory / "report.md").write_text(
      markdown(rows, title, settings, out_dir, "quality_vs_steps.png",
               "quality_vs_cost.png" if cost_plot else None, summary))


def report_options(out_dir: str, num_samples: int = 500, batch_size: int = 250,
                   reference_steps: int = 256, metrics=("fd_dataset", "fidelity"),
                   classifier_dir: str = "", classifier_steps: int = 500,
                   inception_weights: str = "", seed: int = 0,
                   reference_split: str = "train", reference_images: int = 0,
                   clip_x: bool = True) -> quality.Options:
  """The evaluation options of a report whose grids go to <out_dir>/grids and finished rows
  to <out_dir>/rows (an interrupted report continues from them)."""
  return quality.Options(num_samples=num_samples, batch_size=batch_size,
                         metrics=tuple(metrics), reference_steps=reference_steps,
                         classifier_dir=classifier_dir, classifier_steps=classifier_steps,
                         inception_weights=inception_weights, seed=seed,
                         grid_dir=os.path.join(out_dir, "grids"),
                         row_dir=os.path.join(out_dir, "rows"),
                         reference_split=reference_split,
                         reference_images=reference_images, clip_x=clip_x)


def quality_report(teacher_workdir: str, student_workdirs, out_dir: str, steps=(1, 2, 4, 8, 16, 32, 64),
                   sampler: str = "ddim", guidance_weights=(0.0,), mesh=None,
                   **option_kwargs) -> list[dict]:
  """Evaluate the teacher and students (see the module docstring), write the report files to
  `out_dir` and return the rows; `option_kwargs` go to `report_options`."""
  options = report_options(out_dir, **option_kwargs)
  entries = teacher_entries(teacher_workdir, steps, options.reference_steps, sampler,
                            guidance_weights)
  for workdir in student_workdirs:
    entries += student_entries(workdir, sampler, guidance_weights)
  rows = quality.evaluate(entries, options, teacher_workdir, mesh)
  write_report(rows, options, out_dir, f"Quality vs sampling steps of `{teacher_workdir}`",
               teacher=teacher_workdir, students=list(student_workdirs))
  return rows


class IncomparableReportsError(ValueError):
  """Reports whose metric settings differ cannot share a table."""


def merge_reports(paths, out_dir: str) -> list[dict]:
  """The rows of several report.json files in one report in `out_dir`; an error naming the
  differing settings unless every report's metric `settings` agree."""
  reports = []
  for path in paths:
    with epath.Path(path).open() as f:
      reports.append(json.load(f))
  first = reports[0]["settings"]
  for path, report in zip(paths[1:], reports[1:]):
    other = report["settings"]
    differ = [f"{k} ({first.get(k)!r} vs {other.get(k)!r})"
              for k in sorted(set(first) | set(other)) if first.get(k) != other.get(k)]
    if differ:
      raise IncomparableReportsError(
          f"{paths[0]} and {path} differ in {', '.join(differ)}: their metrics are not "
          f"comparable; evaluate both with the same settings.")
  rows = [row for report in reports for row in report["rows"]]
  options = quality.Options(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in reports[0]["options"].items()})
  write_report(rows, options, out_dir, "Merged quality report", dict(first),
               merged=[str(p) for p in paths])
  return rows
