"""The end-to-end pipeline: --mode=pipeline --config=configs/pipeline.py:<preset>.

A pipeline is a set of named **parts**, each a full run config trained in <workdir>/<part>,
and one quality report of them in <workdir>/report:

  parts     {part: run config}; a part whose method needs a teacher names it in `teachers`
  teachers  {part: the part whose workdir is its teacher.workdir (the method's
            teacher_workdir_key)}; parts run teachers first
  rows      {part: how the report evaluates it}: `steps` (step counts of its latest
            checkpoint; () = every stage end at the stage's own N, for distilled students),
            `samplers`, `guidance_weights`, `reference` (the part whose reference_steps-step
            DDIM samples its fidelity is measured against), `max_nfe` (leave out step
            counts whose sampler needs more network evaluations; 0 = keep all),
            `last_stages` (a student's last stage ends only; 0 = every one)
  cost_includes  {part: parts whose training cost its rows add (a grown model's inner run)}
  seeds     how many times each part that learns from another part (a key of `teachers`
            that is no part's teacher: the distillations, the grown Matryoshka) is trained,
            with run seeds seed, seed + 1, ...: its copies are the parts <part>_seed<k>, the
            teachers are shared, and the report adds a table of each row's mean and spread
            over the seeds (1 = one run of every part)
  report    the report's metric settings (eval.report.report_options)

Every part resumes from its own checkpoints, so an interrupted pipeline restarted with the
same command continues where it stopped and finished parts are skipped. Override a part's
keys with e.g. --config.parts.teacher.num_train_steps=500 or
--config.parts.progressive.distill.steps_per_stage=100.

Presets:
  digits         teacher -> progressive distillation 64 -> 1 steps -> report (the README's
                 first command, 6-10 minutes on 2 CPU cores)
  fashion_mnist  the same on Fashion-MNIST (hours on a CPU)
  digits_all     every method on the digits teachers, one report (`all_methods`): the
                 teacher and the class-conditional teacher guided distillation needs;
                 progressive, guided, Denoising Student, BOOT (unconditional, and
                 w-conditioned from the conditional teacher), consistency and SiD distilled
                 from them; Catch-Up (and its one-step stage) and Matryoshka (grown: its
                 inner network alone, then the full model, half of the updates each) trained
                 on the same data. One budget in one currency, wall-clock training seconds
                 on the machine (the report's `train s`; the data-trained parts evaluate no
                 teacher, and SiD's cost is mostly its own networks, so teacher evaluations
                 would not compare them): each part's preset takes about the teacher's time
                 for its 2k updates (measured 0.9-1.8x of it: README)
  fashion_mnist_cpu
                 the same on Fashion-MNIST sized for 2 CPU cores (about 3 hours): the
                 `fashion_mnist_cpu` preset of every method config, each with 0.4 of its
                 digits preset's updates (configs/teacher.py:FASHION_CPU_SHARE: digits' one
                 budget, shrunk by one factor; the teacher 5k); FID from the converted
                 Inception weights (a missing file is an error naming the conversion command)
                 and FD-fashion_mnist, 1000 samples a row against the first 1000 training
                 images; the rows are each part's few-step end (`headline_rows`)
"""
import ml_collections

from configs import (boot, catch_up, consistency, denoising_student, guided, matryoshka,
                     progressive, sid, teacher)
from configs.base import select

TEACHER_STEPS = (1, 2, 4, 8, 16, 32, 64)


def row_spec(steps=(), samplers=("ddim",), guidance_weights=(0.0,), reference="teacher",
             max_nfe=0, last_stages=0):
  """How the report evaluates one part (see the module docstring)."""
  return ml_collections.ConfigDict(dict(steps=tuple(steps), samplers=tuple(samplers),
                                        guidance_weights=tuple(guidance_weights),
                                        reference=reference, max_nfe=max_nfe,
                                        last_stages=last_stages))


def pipeline_config(parts: dict, teachers: dict, rows: dict, cost_includes=None, seeds=1,
                    **report):
  """A pipeline of `parts` (see the module docstring); `report` holds the keyword arguments
  of eval.report.report_options."""
  c = ml_collections.ConfigDict()
  c.parts = ml_collections.ConfigDict(parts)
  c.teachers = ml_collections.ConfigDict(teachers)
  c.rows = ml_collections.ConfigDict(rows)
  c.cost_includes = ml_collections.ConfigDict(cost_includes or {})
  c.seeds = seeds
  c.report = ml_collections.ConfigDict(report)
  return c


def progressive_pipeline(preset: str, num_samples: int, reference_steps: int):
  """Teacher -> progressive distillation -> report."""
  return pipeline_config(
      parts=dict(teacher=teacher.get_config(preset), progressive=progressive.get_config(preset)),
      teachers=dict(progressive="teacher"),
      rows=dict(teacher=row_spec(TEACHER_STEPS), progressive=row_spec()),
      num_samples=num_samples, reference_steps=reference_steps)


def all_methods(preset: str, rows: dict, **report):
  """Every method of the project on the `preset` teachers, one report of `rows` (module
  docstring)."""
  parts = dict(
      teacher=teacher.get_config(preset), teacher_cond=teacher.get_config(f"{preset}_cond"),
      progressive=progressive.get_config(preset), guided=guided.get_config(preset),
      denoising_student=denoising_student.get_config(preset), boot=boot.get_config(preset),
      boot_guided=boot.get_config(f"{preset}_cond"),
      consistency=consistency.get_config(preset), sid=sid.get_config(preset),
      catch_up=catch_up.get_config(preset),
      catch_up_onestep=catch_up.get_config(f"{preset}_onestep"),
      **grown_matryoshka(preset))
  teachers = dict(progressive="teacher", guided="teacher_cond", denoising_student="teacher",
                  boot="teacher", boot_guided="teacher_cond", consistency="teacher",
                  sid="teacher",
                  catch_up_onestep="catch_up", matryoshka="matryoshka_inner")
  return pipeline_config(parts, teachers, rows,
                         cost_includes=dict(matryoshka=("matryoshka_inner",)), **report)


def grown_matryoshka(preset: str) -> dict:
  """Matryoshka grown as the paper trains it (Sec. 3.3): `matryoshka_inner`, the inner
  network alone on the lower resolutions for half of the preset's updates, then `matryoshka`,
  the full model around it (mdm.inner_workdir) for the other half; the report counts both.
  Both on the teacher's loss (v-MSE) and with the EMA ramped up (configs/base.py's default; a
  fixed 0.999 over 1000 updates keeps 37% of its start, the random inner, then the fresh
  shell, which put digits' grown run at FD 246 at 64 steps)."""
  inner, full = matryoshka.get_config(f"{preset}_inner"), matryoshka.get_config(preset)
  inner.num_train_steps = full.num_train_steps // 2
  full.num_train_steps -= inner.num_train_steps
  for part in (inner, full):
    part.diffusion.weighting = "snr+1"   # the teacher's v-MSE (digits: FD 34 against 41)
  return dict(matryoshka_inner=inner, matryoshka=full)


def every_row():
  """digits_all's rows: every step count, stage end and guidance weight of every part."""
  weights = (0.0, 2.0)
  return dict(
      teacher=row_spec(TEACHER_STEPS),
      teacher_cond=row_spec((1, 4, 16, 64), guidance_weights=weights, reference="teacher_cond"),
      progressive=row_spec(), guided=row_spec(guidance_weights=weights, reference="teacher_cond"),
      denoising_student=row_spec(), boot=row_spec(), sid=row_spec(),
      boot_guided=row_spec(last_stages=1, guidance_weights=weights, reference="teacher_cond"),
      consistency=row_spec((1, 2, 4), samplers=("consistency",)),
      catch_up=row_spec((1, 2, 4, 8, 15), samplers=("euler", "heun"), max_nfe=15),
      catch_up_onestep=row_spec(), matryoshka=row_spec(TEACHER_STEPS))


def headline_rows():
  """fashion_mnist_cpu's rows, few enough for FID on a CPU (about 2.5 minutes a row): each
  part at its few-step end, the teacher at 16 and 32 steps, the conditional one (w = 2) at 32,
  the two references."""
  cond = dict(guidance_weights=(2.0,), reference="teacher_cond")
  return dict(
      teacher=row_spec((16, 32)), teacher_cond=row_spec((32,), **cond),
      progressive=row_spec(max_nfe=2), guided=row_spec(max_nfe=1, **cond),
      denoising_student=row_spec(), boot=row_spec(last_stages=1), sid=row_spec(),
      boot_guided=row_spec(last_stages=1, **cond),
      consistency=row_spec((1,), samplers=("consistency",)),
      catch_up=row_spec((8,), samplers=("euler",)),
      catch_up_onestep=row_spec(last_stages=1), matryoshka=row_spec((16,)))


PRESETS = {
    "digits": lambda: progressive_pipeline("digits", num_samples=500, reference_steps=128),
    "fashion_mnist": lambda: progressive_pipeline("fashion_mnist", num_samples=5000,
                                                  reference_steps=512),
    "digits_all": lambda: all_methods("digits", every_row(), num_samples=500,
                                      reference_steps=128),
    "fashion_mnist_cpu": lambda: all_methods(
        "fashion_mnist_cpu", headline_rows(), num_samples=1000, reference_steps=32,
        metrics=("fd_dataset", "fidelity", "fid"), reference_images=1000),
}


def get_config(arg=None):
  return select(PRESETS, arg, "pipeline")
