"""The shared offline writer (training/offline.py) and its grain source
(training/offline_source.py): files independent of the process count and of interruptions,
atomic shards, settings checked on restart, rows and resume through grain."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath

from tests import offline_worker
from training import offline, offline_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
DATA_CONFIG = {"read_threads": 0, "num_workers": 0}


def worker(directory, *args):
  return subprocess.Popen([sys.executable, "-m", "tests.offline_worker", str(directory),
                           *map(str, args)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def finish(process):
  out, _ = process.communicate(timeout=240)
  assert process.returncode == 0, out
  return out


def shard_files(directory):
  """{relative path: bytes} of every shard and meta.json."""
  files = {}
  for split in offline.SPLITS:
    for name in sorted(os.listdir(os.path.join(directory, split))):
      if name.endswith(".npy"):
        files[f"{split}/{name}"] = open(os.path.join(directory, split, name), "rb").read()
  files["meta.json"] = open(os.path.join(directory, "meta.json"), "rb").read()
  return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted single-process run."""
  directory = tmp_path_factory.mktemp("reference")
  finish(worker(directory))
  return str(directory)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_every_shard_is_written_once_with_its_cost(reference):
  files = shard_files(reference)
  spec = offline_worker.SPEC
  assert len(files) == 1 + offline.num_shards(200, 24) + offline.num_shards(40, 24)
  cost = __import__("json").load(open(os.path.join(reference, "cost.json")))
  assert cost["rows"] == 240 and cost["evaluations"] == 240 * spec.evaluations_per_example
  assert cost["seconds"] > 0 and cost["rows_per_second"] > 0


def test_writing_a_finished_set_again_changes_nothing(reference, tmp_path):
  """A restarted pipeline writes a finished part's data again: a no-op, not an error."""
  copy = tmp_path / "copy"
  shutil.copytree(reference, copy)
  before = shard_files(copy)
  cost = offline.write(offline_worker.SPEC, {}, epath.Path(copy))
  assert shard_files(copy) == before
  assert cost["rows"] == 240


def test_two_processes_write_the_same_files_as_one(reference, tmp_path):
  port = free_port()
  processes = [worker(tmp_path, i, 2, port) for i in range(2)]
  for p in processes:
    finish(p)
  assert shard_files(str(tmp_path)) == shard_files(reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_resumes_to_the_same_files(reference, tmp_path, sig):
  process = worker(tmp_path, "--pause=0.5")
  train = tmp_path / "train"
  deadline = time.time() + 120
  while time.time() < deadline:
    done = [n for n in os.listdir(train) if n.endswith(".npy")] if train.exists() else []
    if len(done) >= 2:
      break
    time.sleep(0.05)
  process.send_signal(sig)
  process.communicate(timeout=60)
  partial = [n for n in os.listdir(train) if n.endswith(".npy")]
  assert 2 <= len(partial) < offline.num_shards(200, 24)   # stopped midway
  out = finish(worker(tmp_path, "--pause=0"))
  assert "wrote train/" in out
  assert f"train/{sorted(partial)[0]}" not in out           # kept shards were not rewritten
  assert shard_files(str(tmp_path)) == shard_files(reference)
  assert not [n for n in os.listdir(train) if ".tmp-" in n]


def test_other_settings_are_refused(reference, tmp_path):
  import dataclasses
  spec = dataclasses.replace(offline_worker.SPEC, seed=4)
  with pytest.raises(offline.OfflineDataError, match=r"other settings \(differing: \['seed'\]"):
    offline.write(spec, {}, reference)


def test_rows_read_back_as_written(reference):
  spec = offline_worker.SPEC
  examples = offline_source.ShardedExamples(reference, "train")
  assert len(examples) == 200
  generate = jax.jit(spec.generate, static_argnums=2)
  for k in (0, 8):   # a full shard and the short last one
    rows = offline.generate_shard(generate, {}, spec, "train", k)
    read = [examples[k * 24 + j] for j in range(len(rows["noise"]))]
    assert len(read) == offline.shard_rows(200, 24, k)
    for key in ("noise", "image", "label"):
      np.testing.assert_array_equal(np.stack([r[key] for r in read]), rows[key])
  assert examples[0]["noise"].dtype == np.float32 and examples[0]["label"].dtype == np.int32


def test_bucket_reads_match_memory_mapped_reads(reference):
  """The seek-and-read path used for non-local (bucket) shards returns the same rows."""
  path = offline.epath.Path(reference) / "train" / offline.shard_name(1)
  local, remote = offline_source.ShardFile(path), offline_source.ShardFile(path)
  remote.local = False
  remote.offset = len(open(path, "rb").read()) - remote.rows * local.dtype.itemsize
  for j in (0, 5, 23):
    assert local[j].tobytes() == remote[j].tobytes()


def test_train_iterator_resumes_bit_exactly(reference):
  make = lambda: offline_source.make_train_iterator(reference, DATA_CONFIG, 16, seed=0,
                                                    command="make")
  it = make()
  for _ in range(20):   # past the end of the first epoch (200 rows)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = make()
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(5)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  heldout = list(offline_source.make_eval_iterator(reference, DATA_CONFIG, 16, command="make"))
  assert len(heldout) == 2 and heldout[0]["image"].shape == (16, 4)


def test_missing_shards_name_the_command(reference, tmp_path):
  import shutil
  directory = tmp_path / "pairs"
  shutil.copytree(reference, directory)
  os.remove(directory / "train" / offline.shard_name(3))
  with pytest.raises(offline.OfflineDataError,
                     match=r"1 of 9 shards missing.*`python main.py --mode=pairs --x`"):
    offline_source.ShardedExamples(directory, "train", "python main.py --mode=pairs --x")
  with pytest.raises(offline.OfflineDataError, match="no meta.json"):
    offline_source.ShardedExamples(tmp_path / "nowhere", "train", "cmd")
