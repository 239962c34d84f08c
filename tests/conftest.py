"""Test session set-up: 8 simulated CPU devices and a persistent compilation cache.

Every test runs in one process that sees 8 devices; single-device runs use a mesh
over the first device only, so 1-vs-8 comparisons need no second process.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_CACHE_DIR", os.path.expanduser("~/.cache/diffusion_distillation_jax")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)



import pytest  # noqa: E402

import distillation  # noqa: E402, F401  (registers the methods, as commands/ does for main.py)
from infra.mesh import make_mesh  # noqa: E402
from tests.tiny_config import tiny_teacher_config  # noqa: E402
from training.trainer import Trainer  # noqa: E402


@pytest.fixture
def tiny_config():
  return tiny_teacher_config


def _tiny_teacher(workdir, **overrides) -> str:
  Trainer(tiny_teacher_config(num_train_steps=4, **overrides), str(workdir), make_mesh(1)).run()
  return str(workdir)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
  """A tiny digits teacher's workdir after 4 updates, shared by the tests of a process: read
  it, or copy it to change it."""
  return _tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="session")
def cond_teacher_dir(tmp_path_factory):
  """The same with 10 classes (label dropout; the guided methods' teacher)."""
  return _tiny_teacher(tmp_path_factory.mktemp("cond_teacher"), **{"model.num_classes": 10})


def pytest_collection_modifyitems(items):
  """The files with slow tests first (order otherwise kept): with pytest-xdist's loadfile
  scheduling (pytest.ini) the longest files then start at once instead of last."""
  slow_files = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow_files)
