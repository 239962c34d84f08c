"""Quality evaluation: --mode=eval, the quality-vs-steps report, same-noise fidelity, the NFE
convention, and the dataset classifier trained on the fly when missing."""
import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from commands.evaluate import evaluate_workdir
from configs.base import base_config
from configs.progressive import distill_config
from eval import classifier, quality, quality_features, reference, report, sample_programs
from eval.report import quality_report
from infra.mesh import make_mesh
from tests.tiny_config import tiny_teacher_config
from training.trainer import Trainer

CLASSIFIER_STEPS = 20


@pytest.fixture(scope="module")
def mesh():
  return make_mesh(1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, mesh):
  """A tiny MLP digits teacher, 6 updates (checkpoints at 3 and 6)."""
  workdir = str(tmp_path_factory.mktemp("teacher"))
  Trainer(tiny_teacher_config(), workdir, mesh).run()
  return workdir


@pytest.fixture(scope="module")
def student(tmp_path_factory, teacher, mesh):
  """Progressive distillation of the teacher, 4 -> 2 -> 1 steps, 2 updates per stage, every
  stage end kept."""
  config = distill_config(tiny_teacher_config(), teacher_steps=4, steps_per_stage=2, lr=1e-3,
                          fidelity_samples=8)
  config.teacher.workdir = teacher
  config.update(checkpoint_every_steps=2, log_every_steps=2)
  workdir = str(tmp_path_factory.mktemp("student"))
  Trainer(config, workdir, mesh).run()
  return workdir


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
  """A directory with no classifier: the first FD-digits evaluation trains one there."""
  return str(tmp_path_factory.mktemp("classifiers") / "digits")


def options(classifier_dir, **kwargs):
  return quality.Options(**dict(dict(num_samples=32, batch_size=16, reference_steps=4,
                                     classifier_dir=classifier_dir,
                                     classifier_steps=CLASSIFIER_STEPS), **kwargs))


def test_missing_classifier_is_trained_and_cached(classifier_dir):
  assert not os.path.exists(classifier_dir)
  model, params, directory = quality_features.dataset_classifier("digits", classifier_dir,
                                                                  CLASSIFIER_STEPS)
  with open(os.path.join(classifier_dir, "config.json")) as f:
    saved = json.load(f)
  assert directory == classifier_dir
  assert saved["dataset"] == "digits" and saved["steps"] == CLASSIFIER_STEPS
  _, loaded, _ = quality_features.dataset_classifier("digits", classifier_dir, steps=10 ** 9)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)
  test_images, test_labels, _ = classifier.load_split("digits", "test")   # the saved accuracy is
  assert saved["test_accuracy"] == pytest.approx(                       # the loaded model's,
      classifier.accuracy(model, loaded, test_images, test_labels), abs=1e-9)
  assert saved["test_accuracy"] > 0.2                                    # above chance (0.1)
  features = quality_features.classifier_features("digits", classifier_dir, CLASSIFIER_STEPS)
  assert os.path.exists(os.path.join(classifier_dir, "train_stats.npz"))   # eval.reference_split
  mu, sigma = features.reference
  assert mu.shape == (model.features,) and sigma.shape == (model.features, model.features)


def test_reference_statistics_of_the_first_n_images(classifier_dir):
  """eval.reference_images = N: the statistics of the split's first N images, cached apart."""
  first = quality_features.classifier_features("digits", classifier_dir, CLASSIFIER_STEPS,
                                               count=100)
  assert first.count == 100
  assert os.path.exists(os.path.join(classifier_dir, "train100_stats.npz"))
  images, _, _ = classifier.load_split("digits", "train")
  expected = reference.dataset_stats(first.fn, quality_features.batches(images[:100], 50))
  for got, want in zip(first.reference, expected, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  whole = quality_features.classifier_features("digits", classifier_dir, CLASSIFIER_STEPS)
  assert whole.count == len(images) and not np.allclose(whole.reference[0], first.reference[0])


def test_fid_without_inception_weights_names_the_conversion_command(tmp_path):
  missing = str(tmp_path / "inception_fid.npz")
  with pytest.raises(FileNotFoundError, match="python -m eval.convert_inception"):
    quality_features.inception_features("digits", missing)


def test_eval_mode_writes_metrics(teacher, classifier_dir, mesh, capsys):
  eval_config = base_config().eval
  eval_config.update(samplers="ddim,heun", num_steps="1,2", num_samples=32, batch_size=16,
                     reference_steps=4, classifier_dir=classifier_dir,
                     classifier_steps=CLASSIFIER_STEPS)
  rows = evaluate_workdir(teacher, eval_config, mesh)
  with open(os.path.join(teacher, "eval", "metrics_step6.json")) as f:
    written = json.load(f)
  assert written["checkpoint_step"] == 6 and written["reference_workdir"] == teacher
  assert (written["num_samples"], written["reference_steps"], written["reference_images"]) == (
      32, 4, "all")
  assert written["rows"] == json.loads(json.dumps(rows))
  assert [(r["sampler"], r["steps"], r["nfe"]) for r in rows] == [
      ("ddim", 1, 1), ("ddim", 2, 2), ("heun", 1, 1), ("heun", 2, 3)]   # heun: 2 N - 1
  for row in written["rows"]:
    assert row["params"] == "ema_params" and row["num_samples"] == 32
    for key in ("FD-digits", "fidelity_mse", "fidelity_psnr", "seconds_per_image"):
      assert math.isfinite(row[key]) and row[key] > 0, (key, row)
  assert any(name.startswith("events.out.tfevents")
             for name in os.listdir(os.path.join(teacher, "eval")))
  assert all(os.path.exists(row["grid"]) for row in rows)
  assert "| FD-digits |" in capsys.readouterr().out


def test_fidelity_of_a_model_to_itself_from_the_same_noise(teacher, classifier_dir, mesh,
                                                          tmp_path):
  """A copy of the run, drawn independently, matches the reference bit for bit (same noise);
  fewer steps do not."""
  copy = str(tmp_path / "copy")
  shutil.copytree(teacher, copy)
  rows = quality.evaluate([quality.Entry(copy, 4), quality.Entry(copy, 2)],
                          options(classifier_dir, metrics=("fidelity",)), teacher, mesh)
  assert rows[0]["fidelity_mse"] == 0.0 and rows[0]["fidelity_psnr"] == math.inf
  assert rows[1]["fidelity_mse"] > 0.0 and math.isfinite(rows[1]["fidelity_psnr"])


def test_fd_of_a_known_shift_through_the_eval_path(teacher, classifier_dir, mesh, monkeypatch):
  """With reference statistics = the samples' own (mu, sigma) with mu shifted by delta, the row's
  FD-digits (sampling, classifier features, streamed statistics, Frechet distance) is the closed
  form |delta|^2 (equal covariances: the trace term vanishes)."""
  opts = options(classifier_dir, metrics=("fd_dataset",))
  evaluator = quality.Evaluator(opts, mesh=mesh)
  entry = evaluator.resolve(quality.Entry(teacher, 2))
  samples = evaluator.samples(entry)
  features = evaluator.features("classifier", samples.config)
  mu, sigma = reference.dataset_stats(features.fn, quality_features.batches(samples.images, 16))
  delta = np.linspace(-1.0, 1.0, mu.shape[0])
  shifted = features._replace(reference=(mu + delta, sigma))
  monkeypatch.setitem(quality.FEATURES, "classifier", lambda *args: shifted)
  row = quality.Evaluator(opts, mesh=mesh).row(entry)
  np.testing.assert_allclose(row["FD-digits"], np.sum(delta ** 2), rtol=1e-3)


def test_nfe_convention():
  config = tiny_teacher_config()
  # heun and rk4 end with one DDIM step: 2 (N - 1) + 1 and 4 (N - 1) + 1
  assert [sample_programs.nfe(config, s, 8) for s in ("ddim", "ancestral", "stochastic", "euler",
                                              "heun", "rk4")] == [8, 8, 8, 8, 15, 29]
  config.model.num_classes = 10                    # w = 0: the conditional branch alone
  assert sample_programs.nfe(config, "ddim", 8) == 8 and sample_programs.nfe(config, "heun", 8) == 15
  config.sample.guidance_weight = 1.0              # CFG via sampling.guided: doubled batch
  assert sample_programs.nfe(config, "ddim", 8) == 16 and sample_programs.nfe(config, "heun", 8) == 30
  config.model.guidance = True                     # a w-conditioned student: one branch
  assert sample_programs.nfe(config, "ddim", 8) == 8
  with pytest.raises(ValueError, match="Cannot evaluate sampler 'ddim_encode'"):
    sample_programs.nfe(config, "ddim_encode", 8)


def test_one_program_per_run_and_sampler():
  a, b = tiny_teacher_config(), tiny_teacher_config()
  b.sample.update(num_steps=64, num_samples=512, batch_size=512)
  b.update(num_train_steps=99, seed=3)
  assert sample_programs.sample_program(a) is sample_programs.sample_program(b)
  b.sample.sampler = "heun"
  assert sample_programs.sample_program(a) is not sample_programs.sample_program(b)


def test_guidance_weights_only_for_conditional_models():
  config = tiny_teacher_config()
  assert sample_programs.guidance_weights_for(config, [0, 1, 3]) == [0.0]
  config.model.num_classes = 10
  assert sample_programs.guidance_weights_for(config, ["0", 2]) == [0.0, 2.0]


def test_report(teacher, student, classifier_dir, mesh, tmp_path):
  out = str(tmp_path / "report")
  rows = quality_report(teacher, [student], out, num_samples=32, batch_size=16, steps=(1, 2),
                        reference_steps=4, classifier_dir=classifier_dir,
                        classifier_steps=CLASSIFIER_STEPS, mesh=mesh)
  name = os.path.basename(student)
  assert [(r["model"], r["steps"], r["checkpoint_step"]) for r in rows] == [
      ("teacher", 1, 6), ("teacher", 2, 6), ("teacher", 4, 6), (name, 2, 2), (name, 1, 4)]
  assert rows[2]["fidelity_psnr"] == math.inf            # the reference row itself
  assert all(math.isfinite(r["FD-digits"]) for r in rows)
  assert all(math.isfinite(r["fidelity_psnr"]) for r in rows[:2] + rows[3:])
  with open(os.path.join(out, "report.json")) as f:
    saved = json.load(f)
  assert saved["rows"] == json.loads(json.dumps(rows))
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  assert markdown.count(f"| {name} |") == 2 and "quality_vs_steps.png" in markdown
  with Image.open(os.path.join(out, "quality_vs_steps.png")) as plot:
    assert plot.format == "PNG" and plot.size[0] > plot.size[1] > 100
  # No row has a training cost (no pipeline): no cost figure, and none linked.
  assert not os.path.exists(os.path.join(out, "quality_vs_cost.png"))
  assert "quality_vs_cost" not in markdown
  for row in rows:
    with Image.open(row["grid"]) as grid:
      assert grid.format == "PNG"


def test_quality_vs_cost_figure(tmp_path):
  """A point per row with a training cost and a finite FD, grouped by model; the figure and
  its link are written only when such rows exist."""
  row = lambda model, nfe, fd, seconds: dict(
      model=model, checkpoint_step=1, sampler="ddim", steps=nfe, guidance_weight=0.0, nfe=nfe,
      seconds_per_image=0.1, **{"FD-digits": fd}, **({"train_seconds": seconds} if seconds else {}))
  rows = [row("teacher", 128, 11.5, 300.0), row("teacher", 1, 786.0, 300.0),
          row("sid", 1, 14.0, 120.0), row("sid", 1, math.nan, 120.0), row("ref", 4, 9.0, None)]
  assert report.cost_points(rows, "FD-digits", "train_seconds") == {
      "teacher": [(300.0, 11.5, 128), (300.0, 786.0, 1)], "sid": [(120.0, 14.0, 1)]}
  out = tmp_path / "with_cost"
  report.write_report(rows, options(None), str(out), "t")
  assert "![quality vs training cost](quality_vs_cost.png)" in (out / "report.md").read_text()
  with Image.open(out / "quality_vs_cost.png") as plot:
    assert plot.format == "PNG" and plot.size[0] > plot.size[1] > 100
  assert report.plot_cost(rows[-1:], str(tmp_path / "none.png")) is None
  assert not (tmp_path / "none.png").exists()


def test_saved_rows_are_reused_and_only_with_the_same_options(teacher, classifier_dir, mesh,
                                                              tmp_path, monkeypatch):
  """options.row_dir: a rerun reads the finished rows and the fidelity reference's samples
  instead of sampling again (an interrupted report continues); other options evaluate afresh."""
  opts = options(classifier_dir, row_dir=str(tmp_path / "rows"))
  entries = [quality.Entry(teacher, 1), quality.Entry(teacher, 2)]
  rows = quality.evaluate(entries, opts, teacher, mesh)
  saved = sorted(os.listdir(tmp_path / "rows"))
  assert sorted(os.path.splitext(f)[1] for f in saved) == [".json", ".json", ".npz"]

  drawn = []
  draw = quality.Evaluator._draw
  monkeypatch.setattr(quality.Evaluator, "_draw",
                      lambda self, entry: drawn.append(entry.num_steps) or draw(self, entry))
  os.remove(tmp_path / "rows" / next(f for f in saved if f.endswith(".json")))
  untimed = lambda rows: [{k: v for k, v in r.items() if k != "seconds_per_image"} for r in rows]
  redone = quality.evaluate(entries, opts, teacher, mesh)
  assert untimed(redone) == untimed(rows)
  assert len(drawn) == 1 and drawn[0] in (1, 2)   # the lost row, not its reference (4 steps)

  def no_sampling(*args):
    raise AssertionError("sampled again")
  monkeypatch.setattr(quality.Evaluator, "_draw", no_sampling)
  assert quality.evaluate(entries, opts, teacher, mesh) == json.loads(json.dumps(redone))
  with pytest.raises(AssertionError, match="sampled again"):
    quality.evaluate(entries, dataclasses.replace(opts, num_samples=16), teacher, mesh)
