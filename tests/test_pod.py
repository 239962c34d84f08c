"""What a pod run relies on: resume without the teacher's workdir, non-finite streaks caught at
their step, sampling sharded over the mesh, preemption ending a pipeline, unfinished teachers
refused, bucket (non-local) workdirs and a real two-process run."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from infra import checkpoint
from infra.grid import make_grid
from infra.mesh import make_mesh
from tests.pod_configs import tiny_distill
from tests.tiny_config import tiny_teacher_config
from training import trainer as trainer_module
from training.trainer import NonFiniteLossError, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_STOPPED_EARLY = 75     # main.EXIT_STOPPED_EARLY


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.step, state.stage_index,
       state.frozen, state.rng)))]


def _distill(teacher_dir, num_train_steps=0):
  config = tiny_distill()
  config.teacher.workdir = str(teacher_dir)
  config.num_train_steps = num_train_steps
  return config


# --- Resume without the teacher's workdir (issue 8, item 5) ---------------------------------

def test_distillation_resumes_after_its_teacher_workdir_is_gone(tmp_path, teacher_dir):
  teacher = tmp_path / "teacher"
  shutil.copytree(teacher_dir, teacher)
  full = Trainer(_distill(teacher), str(tmp_path / "full"), make_mesh(1)).run()
  assert int(full.step) == 4
  interrupted = str(tmp_path / "interrupted")
  assert int(Trainer(_distill(teacher, 3), interrupted, make_mesh(1)).run().step) == 3
  shutil.move(str(teacher), str(tmp_path / "moved"))           # the teacher's workdir is gone
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint directory"):
    Trainer(_distill(teacher), str(tmp_path / "fresh"), make_mesh(1))   # a new run needs it
  resumed = Trainer(_distill(teacher), interrupted, make_mesh(1)).run()
  for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


# --- Non-finite streaks (item 6) --------------------------------------------------------------

def _poison(monkeypatch, nan_steps):
  """Batches of the (0-based) step indices in `nan_steps` get a NaN pixel."""
  count, shard = [0], trainer_module.shard_batch

  def poisoned(mesh, batch):
    if count[0] in nan_steps:
      batch = dict(batch, image=np.where(np.arange(batch["image"].size).reshape(
          batch["image"].shape) == 0, np.nan, batch["image"]).astype(batch["image"].dtype))
    count[0] += 1
    return shard(mesh, batch)
  monkeypatch.setattr(trainer_module, "shard_batch", poisoned)


def _streak_config(num_train_steps):
  # The log interval is far larger than the limit: only a per-step check can stop in time.
  return tiny_teacher_config(num_train_steps=num_train_steps, max_nonfinite_in_row=3,
                             log_every_steps=40, checkpoint_every_steps=100)


def test_nonfinite_streak_stops_at_the_step_it_reaches_the_limit(tmp_path, monkeypatch):
  _poison(monkeypatch, set(range(2, 100)))                      # steps 3, 4, ... are NaN
  trainer = Trainer(_streak_config(30), str(tmp_path), make_mesh(8))
  with pytest.raises(NonFiniteLossError, match="3 non-finite updates in a row at step 5 "):
    trainer.run()
  assert int(trainer.state.step) <= 6            # the step after is at most dispatched
  assert trainer.manager.latest_step() is None   # and nothing was saved on the way


def test_interrupted_nonfinite_streaks_do_not_stop(tmp_path, monkeypatch):
  _poison(monkeypatch, {0, 1, 3, 4, 6, 7})                      # streaks of 2, limit 3
  state = Trainer(_streak_config(9), str(tmp_path), make_mesh(8)).run()
  assert int(state.step) == 9
  assert int(state.opt_state.total_notfinite) == 6
  assert int(state.opt_state.notfinite_count) == 0


# --- Sampling and stage metrics sharded over the mesh (item 11) ------------------------------

def test_training_samples_are_sharded_and_equal_on_1_and_8_devices(tmp_path, teacher_dir):
  config = _distill(teacher_dir)
  config.sample.num_samples = 16
  trainers = {n: Trainer(config, str(tmp_path / str(n)), make_mesh(n)) for n in (1, 8)}
  images = {n: t.draw_samples(0, 0) for n, t in trainers.items()}
  assert images[8].shape == (16, 8, 8, 1)
  np.testing.assert_allclose(images[1], images[8], atol=1e-5)
  np.testing.assert_array_equal(make_grid(images[1]), make_grid(images[8]))
  # Under the mesh every device draws and denoises 2 of the 16 samples.
  t = trainers[8]
  with jax.set_mesh(t.mesh):
    out = t.sample_fn(t.params_for_sampling(), jax.random.PRNGKey(0), 16, t.stage_args(0))
  assert out.sharding.spec == P("data")
  assert {s.data.shape for s in out.addressable_shards} == {(2, 8, 8, 1)}
  metrics = {n: t.stage_metrics(0, 0) for n, t in trainers.items()}
  assert set(metrics[1]) == {"fidelity_psnr", "fidelity_mse"}
  for key in metrics[1]:
    np.testing.assert_allclose(metrics[1][key], metrics[8][key], rtol=1e-4)


# --- Preemption ends the pipeline; unfinished teachers are refused (item 13) -----------------

def _main(*args, timeout=300):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_sigterm_ends_the_pipeline_and_unfinished_teachers_are_refused(tmp_path):
  workdir = tmp_path / "pipeline"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  process = subprocess.Popen(
      [sys.executable, "main.py", "--mode=pipeline", f"--workdir={workdir}",
       "--config=tests/pod_configs.py:pipeline"], cwd=ROOT, env=env, stderr=subprocess.PIPE,
      text=True)
  deadline = time.time() + 240
  for line in process.stderr:
    step = re.search(r"\[(\d+)\] ", line)
    if (step and int(step.group(1)) >= 3) or time.time() > deadline:
      break                                        # the teacher part is training
  process.send_signal(signal.SIGTERM)
  rest = process.communicate(timeout=120)[1]
  assert process.returncode == EXIT_STOPPED_EARLY, rest[-3000:]
  stopped = int(re.search(r"Stopped at step (\d+) on request", rest).group(1))
  assert stopped >= 3
  assert checkpoint.make_manager(str(workdir / "teacher"), read_only=True).latest_step() == stopped
  assert not (workdir / "progressive").exists()    # no later part started
  assert not (workdir / "report").exists()

  # Distilling that teacher, stopped short of its 1e6-step schedule, is a clear error ...
  args = ["--config=tests/pod_configs.py:distill", f"--config.teacher.workdir={workdir}/teacher"]
  result = _main(f"--workdir={tmp_path / 'student'}", *args)
  assert result.returncode not in (0, EXIT_STOPPED_EARLY)
  assert re.search(rf"stops at step {stopped}, short of the end of its schedule \(step 1000000\)"
                   r".*--config.teacher.allow_unfinished=True", result.stderr), \
      result.stderr[-3000:]
  assert not (tmp_path / "student" / "checkpoints").exists() or not os.listdir(
      tmp_path / "student" / "checkpoints")
  # ... unless asked for.
  result = _main(f"--workdir={tmp_path / 'student'}", *args,
                 "--config.teacher.allow_unfinished=True")
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpoint.make_manager(str(tmp_path / "student"), read_only=True).latest_step() == 4


def test_sigterm_between_two_parts_stops_the_pipeline_before_the_next(tmp_path, monkeypatch):
  from tests.pod_configs import tiny_pipeline
  from commands import pipeline
  config = tiny_pipeline()
  config.parts.teacher.num_train_steps = 2
  record = pipeline.record_cost

  def record_then_sigterm(*args):           # the teacher part has finished: a SIGTERM now
    cost = record(*args)
    os.kill(os.getpid(), signal.SIGTERM)
    return cost
  monkeypatch.setattr(pipeline, "record_cost", record_then_sigterm)
  with pytest.raises(trainer_module.StoppedEarly, match="before part 'progressive'"):
    pipeline.run_pipeline(config, str(tmp_path))
  assert checkpoint.make_manager(str(tmp_path / "teacher"), read_only=True).latest_step() == 2
  assert not (tmp_path / "progressive").exists() and not (tmp_path / "report").exists()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL    # the handler is given back


# --- Two processes x 4 CPU devices on localhost (item 9) --------------------------------------

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(argv, timeout=300):
  """Run argv(process_id, coordinator) for process ids 0 and 1 at once (4 CPU devices each,
  gloo collectives); returns [(exit status, stderr)] once both end."""
  coordinator = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  processes = [subprocess.Popen(argv(i, coordinator), cwd=ROOT, env=env, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for i in range(2)]
  try:
    errors = [p.communicate(timeout=timeout)[1] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, err) for p, err in zip(processes, errors)]


def _main_distributed(*args):
  return lambda i, coordinator: [
      sys.executable, "main.py", "--distributed", f"--coordinator_address={coordinator}",
      "--num_processes=2", f"--process_id={i}", "--config=tests/tiny_config.py", *args]


@pytest.mark.slow
def test_two_processes_train_resume_and_sample(tmp_path):
  """The first 3 steps with the state split along mesh.fsdp = 2 (each process saves its
  shards); the resume to 6 restores it onto the replicated mesh."""
  workdir = str(tmp_path / "run")
  for status, err in _two_processes(_main_distributed(
      f"--workdir={workdir}", "--config.num_train_steps=3", "--config.mesh.fsdp=2",
      "--config.mesh.fsdp_min_size=256")):
    assert status == 0, err[-3000:]
  assert checkpoint.make_manager(workdir, read_only=True).latest_step() == 3

  worker = lambda i, coordinator: [sys.executable, "tests/multiprocess_worker.py", coordinator,
                                   "2", str(i), workdir, "6", str(tmp_path / f"params{i}.npz")]
  for status, err in _two_processes(worker):
    assert status == 0, err[-3000:]
  params = [dict(np.load(tmp_path / f"params{i}.npz")) for i in range(2)]
  for p in params:
    assert int(p.pop("start")) == 3 and int(p.pop("step")) == 6   # resumed, then finished
  assert sorted(params[0]) == sorted(params[1])
  for key in params[0]:
    assert np.all(np.isfinite(params[0][key])), key
    np.testing.assert_array_equal(params[0][key], params[1][key])
  assert checkpoint.make_manager(workdir, read_only=True).latest_step() == 6

  for status, err in _two_processes(_main_distributed(
      "--mode=sample", f"--workdir={workdir}", "--config.sample.num_samples=12",
      "--config.sample.batch_size=8")):
    assert status == 0, err[-3000:]
  written = sorted(os.listdir(os.path.join(workdir, "samples")))
  assert [f for f in written if f.endswith(".npz")] == ["ddim_2steps_ckpt6.npz"]
  images = np.load(os.path.join(workdir, "samples", "ddim_2steps_ckpt6.npz"))["images"]
  assert images.shape == (12, 8, 8, 1) and np.all(np.isfinite(images))


# --- Bucket workdirs (item 1) -----------------------------------------------------------------

@pytest.mark.slow
def test_a_bucket_workdir_trains_resumes_samples_and_reports(tmp_path, monkeypatch):
  import tensorflow as tf
  from etils import epath

  from eval import classifier
  from eval.report import quality_report
  from tests import fake_bucket
  from commands.sample import sample_from_workdir

  fake_bucket.install(monkeypatch, str(tmp_path / "bucket_store"))
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  teacher, student = "ram://bucket/teacher", "ram://bucket/student"

  config = tiny_teacher_config(num_train_steps=3, sample_every_steps=3)
  Trainer(config, teacher, make_mesh(8)).run()                          # train, stop ...
  resumed = Trainer(tiny_teacher_config(num_train_steps=4), teacher, make_mesh(8))
  assert int(resumed.state.step) == 3                                   # ... resume
  resumed.run()
  distill = _distill(teacher)
  Trainer(distill, student, make_mesh(8)).run()
  sample_config = tiny_teacher_config().sample
  sample_config.update(num_samples=8, batch_size=8)
  images = sample_from_workdir(teacher, sample_config, make_mesh(8))
  rows = quality_report(teacher, [student], "ram://bucket/report", steps=(1, 2), num_samples=8,
                        batch_size=8, reference_steps=4, classifier_steps=20,
                        classifier_dir="ram://bucket/classifier", mesh=make_mesh(8))

  assert os.listdir(cwd) == []                     # nothing local: no ./ram:/... folders
  bucket = epath.Path("ram://bucket")
  assert sorted(p.name for p in (bucket / "teacher" / "checkpoints").iterdir()) == ["3", "4"]
  assert (bucket / "teacher" / "samples" / "samples_step0000003.png").exists()
  saved = np.load((bucket / "teacher" / "samples" / "ddim_2steps_ckpt4.npz").open("rb"))
  np.testing.assert_array_equal(saved["images"], images)
  assert sorted(json_keys(bucket / "student" / "stage_metrics.json")) == ["1steps", "2steps"]
  assert (bucket / "classifier" / "config.json").exists()
  assert (bucket / "classifier" / "train_stats.npz").exists()
  report = (bucket / "report" / "report.md").read_text()
  train_size = len(classifier.load_split("digits", "train")[0])
  assert f"FD / FID reference statistics: the train split ({train_size} images)" in report
  assert {r["model"] for r in rows} == {"teacher", "student"}
  assert (bucket / "report" / "quality_vs_steps.png").exists()
  assert all((bucket / "report" / "grids" / os.path.basename(r["grid"])).exists() for r in rows)
  assert tf.io.gfile.glob(f"{teacher}/events.out.tfevents.*")   # TensorBoard, TF's ram://


def json_keys(path):
  import json
  return json.loads(path.read_text())
