"""configs/pipeline.py:digits_all, every part shrunk to a few updates: every registered method
trains on the digits teachers and lands in one report; an interrupted pipeline continues."""
import json
import math
import os
import shutil
import signal
import threading
import time

import ml_collections
import pytest

import distillation  # noqa: F401  (fills the method registry)
from commands.pipeline import part_order, run_pipeline
from configs.pipeline import get_config
from training.method import METHODS, get_method
from training.trainer import StoppedEarly

TINY_MLP = dict(name="mlp", hidden=32, depth=1, dropout=0.0)
# Per part: the keys that set its schedule, shrunk to a few updates.
SHRINK = {
    "teacher": {"num_train_steps": 4},
    "teacher_cond": {"num_train_steps": 4},
    "catch_up": {"num_train_steps": 4},
    "matryoshka": {"num_train_steps": 4, "model.ch": 8, "model.inner.ch": 8,
                   "model.inner.ch_mult": (1,), "model.inner.attn_resolutions": ()},
    "matryoshka_inner": {"num_train_steps": 4, "model.ch": 8, "model.ch_mult": (1,),
                         "model.attn_resolutions": ()},
    "progressive": {"distill.teacher_steps": 4, "distill.steps_per_stage": 2,
                    "distill.fidelity_samples": 8},
    "guided": {"distill.teacher_steps": 4, "distill.steps_per_stage": 2, "guided.w_steps": 2,
               "distill.fidelity_samples": 8},
    "denoising_student": {"num_train_steps": 4, "eval_every_steps": 2, "distill.teacher_steps": 4,
                          "distill.num_pairs": 64, "distill.num_heldout": 32,
                          "distill.shard_size": 32, "distill.generation_batch_size": 32},
    "boot": {"boot.schedule": "2,4", "boot.steps_per_stage": 2, "boot.fidelity_samples": 8},
    "boot_guided": {"boot.schedule": "2", "boot.steps_per_stage": 2,
                    "boot.fidelity_samples": 8},
    "consistency": {"consistency.schedule": (4,), "consistency.steps_per_stage": 3,
                    "consistency.fidelity_samples": 8},
    "sid": {"sid.num_updates": 4},
    "catch_up_onestep": {"onestep.num_trajectories": 64, "onestep.num_heldout": 32,
                         "onestep.shard_size": 32, "onestep.generation_batch_size": 32,
                         "onestep.steps_per_point": 2},
}


def _set(config, dotted: str, value):
  *sections, key = dotted.split(".")
  for section in sections:
    config = config[section]
  config[key] = value


def shrunk_digits_all(classifier_dir: str) -> ml_collections.ConfigDict:
  """digits_all with tiny MLPs (nested UNets for Matryoshka), small batches and schedules."""
  config = get_config("digits_all")
  for name, part in config.parts.items():
    if part.model.name == "unet" and name != "matryoshka_inner":   # the grown model's inner
      kept = {k: part.model[k] for k in ("num_classes", "guidance", "output_heads", "dtype")
              if k in part.model}
      part.model = ml_collections.ConfigDict(dict(TINY_MLP, **kept))
    part.batch_size = 16
    part.sample_every_steps = 10**6
    part.sample.update(num_samples=8, batch_size=8)
    part.data.read_threads = 0
    part.optim.warmup_steps = 1
    for dotted, value in SHRINK[name].items():
      _set(part, dotted, value)
  for name, spec in config.rows.items():
    if spec.steps:
      spec.steps = tuple(n for n in spec.steps if n <= 4) or (1,)
  config.report.update(num_samples=16, batch_size=8, reference_steps=8, classifier_steps=20,
                       classifier_dir=classifier_dir)
  return config


def _sigterm_when(path, timeout_s: float = 900):
  """A thread that sends this process SIGTERM (a preemption) once `path` exists."""
  def watch():
    deadline = time.time() + timeout_s
    while not path.exists() and time.time() < deadline:
      time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)
  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


@pytest.mark.slow
def test_digits_all_has_a_row_for_every_method_and_an_interrupted_run_continues(tmp_path):
  config = shrunk_digits_all(str(tmp_path / "classifier"))
  methods = {part.method for part in config.parts.values()}
  # Every registered method but the building blocks that other parts run as a stage
  # (guided_w is guided's stage 1; flow_matching is Catch-Up with Delta = 0) or that draw no
  # images (the DDIM encoder).
  assert methods == set(METHODS) - {"guided_w", "progressive_encoder", "flow_matching"}
  rows = run_pipeline(config, str(tmp_path / "uninterrupted"))
  assert {row["model"] for row in rows} == set(config.rows) == set(config.parts) - {
      "matryoshka_inner"}
  report = json.loads((tmp_path / "uninterrupted" / "report" / "report.json").read_text())
  assert set(report["parts"].values()) == methods
  for row in rows:
    assert row["train_updates"] > 0 and math.isfinite(row["FD-digits"])
  # Training cost: teacher evaluations per example-update times updates times batch (16).
  cost = {r["model"]: (r["train_updates"], r["teacher_evaluations"]) for r in rows}
  assert cost["progressive"] == (4, 4 * 16 * 2) and cost["boot"] == (4, 4 * 16 * 2)
  assert cost["teacher"] == (4, 0) and cost["catch_up"] == (4, 0)
  assert cost["matryoshka"] == (4 + 4, 0)         # the grown model's inner run counted
  # Interrupted by a SIGTERM in the middle of the progressive part, then the same command.
  # The parts before it are the finished ones of the first run (copied), which both sittings
  # skip, their recorded costs kept; progressive and every part after it train here.
  workdir = tmp_path / "interrupted"
  order = part_order(config)
  finished = order[:order.index("progressive")]
  for part in finished:
    shutil.copytree(tmp_path / "uninterrupted" / part, workdir / part)
  recorded = {p: (workdir / p / "train_cost.json").read_text() for p in finished}
  watcher = _sigterm_when(workdir / "progressive" / "checkpoints" / "2")
  with pytest.raises(StoppedEarly):
    run_pipeline(config, str(workdir))
  watcher.join()
  assert not (workdir / "report").exists() and not (workdir / "sid").exists()
  resumed = run_pipeline(config, str(workdir))
  assert {p: (workdir / p / "train_cost.json").read_text() for p in finished} == recorded
  key = lambda r: (r["model"], r["checkpoint_step"], r["sampler"], r["steps"],
                   r["guidance_weight"])
  assert sorted(map(key, resumed)) == sorted(map(key, rows))
  by_key = {key(r): r for r in rows}
  for row in resumed:
    for metric in ("FD-digits", "fidelity_psnr"):
      assert row[metric] == pytest.approx(by_key[key(row)][metric], rel=1e-5)


def test_fashion_mnist_cpu_gives_every_learner_the_same_share_of_its_digits_updates():
  """One budget shrunk by one factor: every part but the two teachers trains 0.4 x the
  updates of its digits_all counterpart (Matryoshka's inner run and full model each)."""
  digits, fashion = get_config("digits_all"), get_config("fashion_mnist_cpu")
  total = lambda part: sum(stage.num_updates for stage in get_method(part).stages())
  for name in set(fashion.parts) - {"teacher", "teacher_cond"}:
    assert total(fashion.parts[name]) == round(0.4 * total(digits.parts[name])), name
  assert total(fashion.parts.teacher) == 5000 and total(fashion.parts.teacher_cond) == 1000


def test_fashion_mnist_cpu_has_every_part_on_its_teachers_and_fid_with_equal_n():
  digits, config = get_config("digits_all"), get_config("fashion_mnist_cpu")
  assert set(config.parts) == set(digits.parts) == set(config.rows) | {"matryoshka_inner"}
  assert dict(config.teachers) == dict(digits.teachers)
  shape = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions")
  for name, part in config.parts.items():
    assert part.data.name == "fashion_mnist" and get_method(part).stages()
    if name in config.teachers:   # a student starts from its teacher's network
      teacher = config.parts[config.teachers[name]]
      model = part.model.inner if name == "matryoshka" else part.model   # grown around it
      assert [model[k] for k in shape] == [teacher.model[k] for k in shape], name
  report = config.report
  assert "fid" in report.metrics and report.reference_images == report.num_samples >= 1000
