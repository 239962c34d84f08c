"""`--mode=pipeline`: train every part of a configs/pipeline.py preset, then one report.

Parts run teachers first (each part's `teacher.workdir` is set to its teacher part's
workdir), each in <workdir>/<part>, resuming from its own checkpoints; a part whose latest
checkpoint is its run's last step is skipped (its recorded cost stands). A part whose method
trains on offline samples of its teacher (Method.offline_data, e.g. the Denoising Student's
pairs) first writes or finishes them (what `--mode=pairs` does). After each part's run, its
training cost is added to <workdir>/<part>/train_cost.json (wall-clock seconds of every
sitting, updates, teacher network evaluations). The report (<workdir>/report) has a row per
(part, steps, sampler, w) of the parts with `rows`, with the part's training cost beside its
metrics, plus the costs of the parts it lists in `cost_includes` (a grown Matryoshka's inner
run, which has no row: it draws lower-resolution images).

With `seeds` > 1 each part that learns from another part and teaches none is trained again
as <part>_seed<k> with run seed + k (`with_seeds`), and the report adds the mean and the
spread of every row's metrics over the seeds (eval.report.seed_summary).

A SIGTERM (preemption) ends the pipeline: the running part saves its checkpoint and stops,
no later part starts and no report is written; `StoppedEarly` is raised (main.py exits with
status 75) and the same command continues. A distillation part refuses a teacher part that
has not reached the end of its schedule (training/pretrained.py, teacher.allow_unfinished).
"""
import json
import time
from typing import Optional

import jax
from absl import logging
from etils import epath

from commands.pairs import write_offline_data
from eval import inception, quality
from eval.report import model_entries, report_options, write_report
from infra import checkpoint
from training.method import get_method
from training.pretrained import run_end
from training.trainer import Preemption, StoppedEarly, train

COST_FILE = "train_cost.json"


def part_order(config) -> list[str]:
  """The parts, each after its teacher part (ties in name order); an error for a cycle or a
  teacher that is not a part."""
  teachers = dict(config.teachers)
  unknown = sorted(f"{p} -> {t}" for p, t in teachers.items()
                   if p not in config.parts or t not in config.parts)
  if unknown:
    raise ValueError(f"pipeline teachers {unknown} name parts that do not exist; parts: "
                     f"{sorted(config.parts)}.")
  order, pending = [], sorted(config.parts)
  while pending:
    ready = [p for p in pending if teachers.get(p) in (None, *order)]
    if not ready:
      raise ValueError(f"pipeline teachers form a cycle among {pending}.")
    order.append(ready[0])
    pending.remove(ready[0])
  return order


def part_run_config(config, part: str, workdir: str):
  """The part's run config with its teacher part's workdir under the method's
  `teacher_workdir_key` (teacher.workdir; mdm.inner_workdir for a grown Matryoshka)."""
  run = config.parts[part].copy_and_resolve_references()
  if part in config.teachers:
    *sections, key = get_method(run).teacher_workdir_key.split(".")
    section = run
    for name in sections:
      section = section[name]
    with run.unlocked():
      section[key] = str(epath.Path(workdir) / config.teachers[part])
  return run


def seed_copies(config) -> dict:
  """{<part>_seed<k>: part} for k = 1..seeds - 1 and every part that has a teacher part and
  is no part's teacher (the teachers are shared by the seeds)."""
  teachers = set(config.teachers.values())
  seeded = sorted(p for p in config.teachers if p not in teachers)
  return {f"{p}_seed{k}": p for k in range(1, config.get("seeds", 1)) for p in seeded}


def with_seeds(config):
  """`config` with a part per `seed_copies` entry: the part's run config with seed + k, its
  teacher, rows and cost_includes."""
  copies = seed_copies(config)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for copy, part in copies.items():
      run = config.parts[part].copy_and_resolve_references()
      run.seed += int(copy.rsplit("_seed", 1)[1])
      config.parts[copy] = run
      config.teachers[copy] = config.teachers[part]
      for section in (config.rows, config.cost_includes):
        if part in section:
          section[copy] = section[part]
  return config


def total_cost(costs: dict, part: str, includes) -> dict:
  """The part's cost plus those of the parts it `includes` (a grown model's inner run)."""
  parts = (part, *includes.get(part, ()))
  return {k: sum(costs[p][k] for p in parts) for k in costs[part]}


def training_cost(run_config, seconds: float, offline_cost=None) -> dict:
  """Updates and teacher network evaluations of a run's whole schedule (plus those of its
  offline data, `offline_cost` = their cost.json), and `seconds`."""
  method = get_method(run_config)
  stages = method.stages()
  updates = sum(stage.num_updates for stage in stages)
  teacher_evaluations = sum(stage.num_updates * run_config.batch_size *
                            method.teacher_evaluations_per_example(stage) for stage in stages)
  teacher_evaluations += (offline_cost or {}).get("evaluations", 0)
  return dict(train_updates=updates, teacher_evaluations=int(teacher_evaluations),
              train_seconds=round(seconds, 1))


def finished_cost(run_config, part_dir: epath.Path) -> Optional[dict]:
  """The recorded cost of a part whose latest checkpoint is its run's last step (a rerun
  skips it without restoring it: no seconds added), else None."""
  path = part_dir / COST_FILE
  if not (path.exists() and checkpoint.checkpoint_dir(part_dir).is_dir()):
    return None
  latest = checkpoint.require_checkpoint(str(part_dir)).latest_step()
  return json.loads(path.read_text()) if latest == run_end(run_config) else None


def record_cost(run_config, part_dir: epath.Path, seconds: float, offline_cost=None) -> dict:
  """Add this sitting's `seconds` to <part_dir>/train_cost.json; returns the cost."""
  path = part_dir / COST_FILE
  before = json.loads(path.read_text())["train_seconds"] if path.exists() else 0.0
  cost = training_cost(run_config, before + seconds, offline_cost)
  if jax.process_index() == 0:
    path.write_text(json.dumps(cost, indent=1))
  return cost


def run_pipeline(config, workdir: str) -> list[dict]:
  """Train every part (see the module docstring), then evaluate and write the report."""
  root = epath.Path(workdir)
  copies = seed_copies(config)
  config = with_seeds(config)
  order = part_order(config)
  options = report_options(str(root / "report"), **config.report)
  if "fid" in options.metrics:   # before hours of training, not after
    inception.require_weights(options.inception_weights or inception.DEFAULT_WEIGHTS)
  costs = {}
  preemption = Preemption()     # a SIGTERM between two parts stops before the next one
  try:
    for i, part in enumerate(order):
      if preemption.requested:
        raise StoppedEarly(f"The pipeline in {root} stopped on request before part {part!r}; "
                           f"run the same command again to continue.")
      run = part_run_config(config, part, workdir)
      costs[part] = finished_cost(run, root / part)
      logging.info("pipeline %d/%d: %s (%s) in %s%s", i + 1, len(order) + 1, part, run.method,
                   root / part, ": finished, skipped" if costs[part] else "")
      if costs[part]:
        continue
      start, offline_cost = time.time(), {}
      try:
        if get_method(run).offline_data() is not None:   # e.g. the Denoising Student's pairs
          offline_cost = write_offline_data(run, str(root / part))
        train(run, str(root / part))
      except StoppedEarly:            # a SIGTERM stopped the part: its sitting still counts
        record_cost(run, root / part, time.time() - start, offline_cost)
        raise
      costs[part] = record_cost(run, root / part, time.time() - start, offline_cost)
  finally:
    preemption.restore()
  report_dir = root / "report"
  logging.info("pipeline %d/%d: quality report in %s", len(order) + 1, len(order) + 1,
               report_dir)
  entries = []
  for part in (p for p in order if p in config.rows):   # an inner run has no row of its own
    spec = config.rows[part]
    entries += model_entries(str(root / part), part, spec.steps, spec.samplers,
                             spec.guidance_weights, str(root / spec.reference), spec.max_nfe,
                             spec.last_stages)
  references = {(r.reference, r.guidance_weight) for r in entries}
  entries += [e for e in (quality.Entry(workdir, options.reference_steps, "ddim", w,
                                        name=epath.Path(workdir).name, reference=workdir)
                          for workdir, w in sorted(references)) if e not in entries]
  rows = quality.evaluate(entries, options, mesh=None)
  rows = [dict(row, **total_cost(costs, row["model"], config.cost_includes)) for row in rows]
  write_report(rows, options, str(report_dir), f"Quality of every part of the pipeline in "
               f"`{root}`", parts={p: config.parts[p].method for p in order}, seeds=copies)
  return rows
