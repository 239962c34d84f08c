"""`--mode=eval`: sample-quality metrics of a checkpoint of a workdir (`eval.checkpoint`: the
best one by held-out loss when the run kept one, else the latest; or 'latest', or a step).

  python main.py --mode=eval --workdir=runs/digits --config.eval.num_steps=1,4,16 \
      --config.eval.samplers=ddim,heun --config.eval.num_samples=1000

Every (sampler, steps, guidance weight) of the `eval` config section (configs/base.py; the
weights only for class-conditional models) becomes a row of eval/quality.py, drawn with the
params the run samples with (EMA when the saved sample.use_ema). Fidelity is measured against
the run's teacher (saved teacher.workdir) when it has one, else against the model itself, at
eval.reference_steps DDIM steps. Written to <workdir>/eval/metrics_step<k>.json (a PSNR of
identical samples is written as Infinity, which Python's json reads), to TensorBoard in
<workdir>/eval (tag '<metric>/<sampler>_<N>steps[_w<w>]' at step k), and printed as a table;
the first 64 samples of each row go to <workdir>/eval/grids_step<k>/.
"""
import json

import jax
from absl import logging
from clu import metric_writers

from eval import quality, quality_table, sample_programs
from infra import checkpoint

DESCRIPTIVE = ("model", "workdir", "checkpoint_step", "params", "sampler", "steps",
               "guidance_weight", "num_samples", "grid", "reference_images")


def reference_workdir(saved_config: dict, workdir: str) -> str:
  """The saved teacher.workdir if it holds checkpoints, else `workdir` itself."""
  teacher = saved_config.get("teacher", {}).get("workdir", "")
  if teacher and checkpoint.checkpoint_dir(teacher).is_dir():
    return teacher
  if teacher:
    logging.warning("The teacher %s has no checkpoints: fidelity is measured against %s.",
                    teacher, workdir)
  return workdir


def eval_entries(workdir: str, eval_config, saved_config: dict, step: int) -> list:
  """One Entry per sampler x steps x guidance weight of `eval_config`."""
  model_config = sample_programs.sampling_config(saved_config, "ddim", 0.0)
  weights = sample_programs.guidance_weights_for(model_config,
                                         quality.parse_list(eval_config.guidance_weights, float))
  return [quality.Entry(workdir, n, sampler, w, step)
          for sampler in quality.parse_list(eval_config.samplers)
          for n in quality.parse_list(eval_config.num_steps, int)
          for w in weights]


def scalars(rows) -> dict:
  """{'<metric>/<sampler>_<N>steps[_w<w>]': value} of every numeric column."""
  out = {}
  for row in rows:
    suffix = quality_table.sampler_name(row)
    for key, value in row.items():
      if key not in DESCRIPTIVE:
        out[f"{key}/{suffix}"] = value
  return out


def write_results(workdir: str, step: int, rows, summary: dict) -> str:
  """<workdir>/eval/metrics_step<k>.json (process 0) and TensorBoard scalars at step k."""
  directory = checkpoint.workdir_path(workdir) / "eval"
  path = directory / f"metrics_step{step}.json"
  writer = metric_writers.create_default_writer(str(directory),
                                                just_logging=jax.process_index() > 0)
  writer.write_scalars(step, scalars(rows))
  writer.flush()
  if jax.process_index() == 0:
    path.write_text(json.dumps(dict(summary, rows=rows), indent=1))
  return str(path)


def evaluate_workdir(workdir: str, eval_config, mesh=None) -> list[dict]:
  """Evaluate the latest checkpoint of `workdir`; write and print the rows (see module doc)."""
  workdir = str(checkpoint.workdir_path(workdir))
  saved = checkpoint.read_config(workdir)
  step, what = checkpoint.select_step(workdir, eval_config.get("checkpoint", "best"))
  logging.info("evaluating %s: step %d", what, step)
  print(f"evaluating {what}: step {step} (--config.eval.checkpoint=best|latest|<step>)")
  reference = reference_workdir(saved, workdir)
  options = quality.options_from_config(
      eval_config, grid_dir=str(checkpoint.workdir_path(workdir) / "eval" / f"grids_step{step}"))
  rows = quality.evaluate(eval_entries(workdir, eval_config, saved, step), options, reference,
                          mesh)
  summary = dict(workdir=workdir, checkpoint_step=step, reference_workdir=reference,
                 **quality.metric_settings(options))
  path = write_results(workdir, step, rows, summary)
  print(quality_table.format_table(rows))
  print(f"wrote {path}")
  return rows
