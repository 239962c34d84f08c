"""The command line and its errors: bad keys and presets, missing data or checkpoints,
damaged checkpoints, SIGTERM, and --mode=sample."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from commands.sample import sample_from_workdir
from infra import checkpoint
from infra.mesh import make_mesh
from infra.sources import DatasetNotFoundError
from tests.tiny_config import tiny_teacher_config
from training.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def main_py(*args, **kwargs):
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=300, **kwargs)


def test_unknown_config_key_is_named(tmp_path):
  result = main_py(f"--workdir={tmp_path}", "--config.optim.learning_rat=1e-3")
  assert result.returncode != 0
  assert "learning_rat" in result.stderr


def test_unknown_preset_lists_the_presets(tmp_path):
  result = main_py(f"--workdir={tmp_path}", "--config=configs/teacher.py:cifar100")
  assert result.returncode != 0
  assert "Unknown teacher preset 'cifar100'" in result.stderr
  assert "cifar10" in result.stderr and "imagenet64" in result.stderr


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  config = tiny_teacher_config(**{"data.name": "mnist", "data.data_dir": str(tmp_path)})
  with pytest.raises(DatasetNotFoundError, match=r"(?s)mnist.*tfds build"):
    Trainer(config, str(tmp_path / "run"), make_mesh(1))


def test_sampling_needs_a_checkpoint(tmp_path):
  config = tiny_teacher_config()
  with pytest.raises(checkpoint.CheckpointError, match="No checkpoint directory"):
    sample_from_workdir(str(tmp_path), config.sample, make_mesh(1))
  os.makedirs(tmp_path / "checkpoints")
  with pytest.raises(checkpoint.CheckpointError, match="holds no finished checkpoint"):
    sample_from_workdir(str(tmp_path), config.sample, make_mesh(1))


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_teacher_config(num_train_steps=3)
  Trainer(config, str(tmp_path), make_mesh(1)).run()
  state_dir = tmp_path / "checkpoints" / "3" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"damaged")
  with pytest.raises(checkpoint.CheckpointError, match=r"(?s)checkpoints/3.*delete that step"):
    Trainer(config, str(tmp_path), make_mesh(1))


def test_sigterm_saves_and_restart_continues(tmp_path):
  workdir = str(tmp_path)
  args = [f"--workdir={workdir}", "--config=tests/tiny_config.py",
          "--config.num_train_steps=1000000", "--config.checkpoint_every_steps=1000000",
          "--config.log_every_steps=1"]
  process = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=ENV,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  for line in process.stderr:
    if re.search(r"\[(\d{2,})\] ", line) or time.time() > deadline:
      break                                      # training is under way (step >= 10)
  process.send_signal(signal.SIGTERM)
  rest = process.communicate(timeout=120)[1]
  assert process.returncode == 75, rest[-2000:]       # main.EXIT_STOPPED_EARLY
  stopped = int(re.search(r"Stopped at step (\d+) on request", rest).group(1))
  assert stopped >= 10
  assert checkpoint.make_manager(workdir, read_only=True).latest_step() == stopped

  result = main_py(*args[:2], f"--config.num_train_steps={stopped + 3}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Resumed from" in result.stderr
  assert checkpoint.make_manager(workdir, read_only=True).latest_step() == stopped + 3

  result = main_py("--mode=sample", f"--workdir={workdir}", "--config=tests/tiny_config.py",
                   "--config.sample.num_samples=12", "--config.sample.batch_size=8")
  assert result.returncode == 0, result.stderr[-2000:]
  out = os.path.join(workdir, "samples", f"ddim_2steps_ckpt{stopped + 3}")
  assert os.path.exists(out + ".png")
  assert np.load(out + ".npz")["images"].shape == (12, 8, 8, 1)

  result = main_py("--mode=sample", f"--workdir={workdir}", "--config=tests/tiny_config.py",
                   "--config.sample.guidance_weight=2")
  assert result.returncode != 0
  assert "needs a class-conditional model" in result.stderr


def test_dataset_that_does_not_fit_the_config(tmp_path):
  config = tiny_teacher_config(**{"data.shape": (28, 28, 1)})
  with pytest.raises(ValueError, match=r"data.shape=\(28, 28, 1\) but 'digits' images are \(8, 8, 1\)"):
    Trainer(config, str(tmp_path), make_mesh(1))


def test_checkpoint_from_8_devices_samples_on_1(tmp_path):
  """A run saved on 8 devices is read by a process that has only one."""
  Trainer(tiny_teacher_config(num_train_steps=2), str(tmp_path), make_mesh(8)).run()
  result = main_py("--mode=sample", f"--workdir={tmp_path}", "--config=tests/tiny_config.py",
                   "--config.sample.num_samples=8", "--config.sample.batch_size=8")
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.path.exists(tmp_path / "samples" / "ddim_2steps_ckpt2.npz")
