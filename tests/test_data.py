"""Tests of the input pipeline: sources, batches, determinism, resume, sharding, errors."""
import gzip
import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
from absl import flags
from sklearn.datasets import load_digits

from infra import sources
from training import data

DIGITS = ml_collections.ConfigDict({"name": "digits", "data_dir": "", "split": "train",
                                    "random_flip": False, "num_workers": 0})
EPOCH_BATCH = 49  # 1,617 digits train images = 33 batches of 49


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(expected, actual):
  assert len(expected) == len(actual)
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def index_examples(n):
  """Examples whose (3, 2, 1) image encodes the index i: rows (i // 256, i // 256),
  (i % 256, i % 256) and an asymmetric row (7, 0) that shows horizontal flips."""
  index = np.arange(n)
  rows = [index // 256, index // 256, index % 256, index % 256, np.full(n, 7), np.zeros(n)]
  return sources.ArrayExamples(np.stack(rows, -1).reshape(n, 3, 2, 1).astype(np.uint8),
                               index % 10)


def decode_index(batch):
  """The example indices of a batch of `index_examples` images."""
  levels = np.round((batch["image"][:, :2, 0, 0] + 1) * 127.5).astype(int)
  return levels[:, 0] * 256 + levels[:, 1]


@pytest.fixture
def index_dataset(monkeypatch):
  """Registers 'index' (101 examples in 'train') for the duration of a test."""
  monkeypatch.setitem(sources.SOURCES, "index", lambda split, data_dir: sources.Source(
      index_examples(101), (3, 2, 1), 10, flippable=True))
  return {"name": "index"}


def test_digits_batches_shape_range_and_labels():
  assert data.dataset_info(DIGITS) == ((8, 8, 1), 10, 1617)
  batch = next(data.make_train_iterator(DIGITS, 32, seed=0))
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  levels = (batch["image"] + 1) * 127.5  # exactly the uint8 levels round(v * 255 / 16)
  np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert set(np.round(levels).astype(int).ravel()) <= {round(v * 255 / 16) for v in range(17)}
  assert set(batch["label"]) <= set(range(10)) and len(set(batch["label"])) > 3


def test_digits_test_split_is_every_tenth_image_in_order():
  digits = load_digits()
  batches = list(data.make_eval_iterator(DIGITS, 64, split="test"))
  assert [len(b["label"]) for b in batches] == [64, 64, 52]
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels, digits.target[::10])
  expected = np.round(digits.images[::10] * 255 / 16)[..., None] / 127.5 - 1
  np.testing.assert_allclose(images, expected, atol=1e-6)


def test_an_epoch_is_a_permutation_and_epochs_differ():
  digits = load_digits()
  train = np.round(digits.images * 255 / 16).astype(np.uint8)[np.arange(1797) % 10 != 0]
  stream = take(data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=3), 66)
  for epoch in (stream[:33], stream[33:]):
    images = np.round((np.concatenate([b["image"] for b in epoch])[..., 0] + 1) * 127.5)
    got = sorted(image.astype(np.uint8).tobytes() for image in images)
    assert got == sorted(image.tobytes() for image in train)
  assert not np.array_equal(stream[0]["image"], stream[33]["image"])


def test_same_seed_same_batches_other_seed_other_batches():
  first = take(data.make_train_iterator(DIGITS, 16, seed=7), 5)
  assert_same_batches(first, take(data.make_train_iterator(DIGITS, 16, seed=7), 5))
  other = take(data.make_train_iterator(DIGITS, 16, seed=8), 5)
  assert not np.array_equal(first[0]["image"], other[0]["image"])


@pytest.fixture(scope="module")
def reference():
  """70 batches (just over two epochs) of an uninterrupted iterator with seed 1."""
  return take(data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=1), 70)


@pytest.mark.parametrize("stop", [10, 33, 40])  # mid-epoch, at the epoch boundary, after it
def test_restored_iterator_continues_with_identical_batches(reference, stop):
  interrupted = data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=1)
  take(interrupted, stop)
  state = data.iterator_state(interrupted)
  resumed = data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=1)
  data.restore_iterator(resumed, state)
  assert_same_batches(reference[stop:], take(resumed, 70 - stop))


def test_iterator_state_round_trips_through_orbax_checkpoint_manager(tmp_path):
  reference = take(data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=2), 60)
  iterator = data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=2)
  take(iterator, 20)
  params = {"w": np.arange(6.0).reshape(2, 3)}
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True)
  with ocp.CheckpointManager(tmp_path / "checkpoints", options=options) as manager:
    manager.save(20, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                              data=grain.checkpoint.CheckpointSave(iterator)))
    take(iterator, 30)  # the saved position must be the one at save time
    manager.wait_until_finished()
  resumed = data.make_train_iterator(DIGITS, EPOCH_BATCH, seed=2)
  with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
    restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(params=ocp.args.StandardRestore(params),
                                data=grain.checkpoint.CheckpointRestore(resumed)))
  np.testing.assert_array_equal(restored["params"]["w"], params["w"])
  assert restored["data"] is resumed
  assert_same_batches(reference[20:], take(resumed, 40))


def test_worker_processes_give_the_in_process_batches_and_restore():
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (absl.app.run does this)
  config = ml_collections.ConfigDict({**DIGITS.to_dict(), "num_workers": 1})
  reference = take(data.make_train_iterator(DIGITS, 32, seed=4), 8)
  iterator = data.make_train_iterator(config, 32, seed=4)
  try:
    assert_same_batches(reference[:4], take(iterator, 4))
    state = data.iterator_state(iterator)
  finally:
    iterator.close()
  resumed = data.make_train_iterator(config, 32, seed=4)
  try:
    data.restore_iterator(resumed, state)
    assert_same_batches(reference[4:], take(resumed, 4))
  finally:
    resumed.close()


def test_each_process_reads_a_disjoint_slice_and_all_cover_the_data(index_dataset, monkeypatch):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  shards, streams = [], []
  for process in range(2):
    monkeypatch.setattr(jax, "process_index", lambda process=process: process)
    batches = list(data.make_eval_iterator(index_dataset, 20, split="train"))
    assert all(len(b["label"]) <= 10 for b in batches)
    shards.append(np.concatenate([decode_index(b) for b in batches]))
    streams.append(np.concatenate([decode_index(b) for b in
                                   take(data.make_train_iterator(index_dataset, 20, seed=0), 11)]))
  np.testing.assert_array_equal(shards[0], np.arange(0, 101, 2))
  np.testing.assert_array_equal(shards[1], np.arange(1, 101, 2))
  for shard, stream in zip(shards, streams):  # training reads only its own slice, each epoch
    np.testing.assert_array_equal(np.sort(stream[:len(shard)]), shard)
    assert set(stream) <= set(shard)
  with pytest.raises(ValueError, match="not divisible"):
    data.make_train_iterator(index_dataset, 21, seed=0)


def test_random_flip_mirrors_about_half_the_images_deterministically(index_dataset):
  config = {**index_dataset, "random_flip": True}
  batches = take(data.make_train_iterator(config, 101, seed=5), 2)
  plain = {i: data.to_model_inputs(e)["image"] for i, e in enumerate(index_examples(101))}
  flips = []
  for batch in batches:
    for image, index in zip(batch["image"], decode_index(batch)):
      original = plain[int(index)]
      flipped = np.array_equal(image, original[:, ::-1])
      assert flipped or np.array_equal(image, original)
      flips.append(flipped)
  assert 60 < sum(flips) < 142  # 202 fair coins: mean 101, sd 7
  assert_same_batches(batches, take(data.make_train_iterator(config, 101, seed=5), 2))
  with pytest.raises(ValueError, match="must not be flipped"):
    data.make_train_iterator({"name": "digits", "random_flip": True}, 8, seed=0)


def test_image_size_must_match_the_source():
  assert data.dataset_info({"name": "digits", "image_size": 8})[0] == (8, 8, 1)
  with pytest.raises(ValueError, match="does not resize"):
    data.make_train_iterator({"name": "digits", "image_size": 32}, 8, seed=0)


def write_idx(path, array):
  """An uint8 IDX file: magic 0 0 8 ndim, big-endian uint32 dims, the bytes."""
  header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_fashion_mnist_reads_idx_files(tmp_path, suffix):
  rng = np.random.default_rng(0)
  splits = {"train": (rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6)),
            "t10k": (rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 10, 3))}
  for prefix, (images, labels) in splits.items():
    write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}"), images)
    write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
  config = {"name": "fashion_mnist", "data_dir": str(tmp_path)}
  assert data.dataset_info(config) == ((28, 28, 1), 10, 6)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    batch = next(data.make_eval_iterator(config, 8, split=split))
    images, labels = splits[prefix]
    np.testing.assert_allclose(batch["image"], images[..., None] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(batch["label"], labels)
  batch = next(data.make_train_iterator(config, 4, seed=0))
  assert batch["image"].shape == (4, 28, 28, 1)


def test_read_idx_rejects_other_files(tmp_path):
  path = tmp_path / "not-idx"
  path.write_bytes(b"PK\x03\x04 not an idx file")
  with pytest.raises(ValueError, match="not an IDX file"):
    sources.read_idx(str(path))


def test_missing_fashion_mnist_directory_raises_a_clear_error(tmp_path):
  missing = str(tmp_path / "no-fashion-here")
  with pytest.raises(sources.DatasetNotFoundError) as error:
    data.make_train_iterator({"name": "fashion_mnist", "data_dir": missing}, 8, seed=0)
  message = str(error.value)
  assert "fashion_mnist" in message and missing in message
  assert "apt-get install dataset-fashion-mnist" in message
  assert isinstance(error.value, ValueError)


DOWNLOAD_ATTEMPTS = []


def refuse_download(builder, *args, **kwargs):
  DOWNLOAD_ATTEMPTS.append(builder.name)
  raise AssertionError(f"tfds tried to download and prepare {builder.name}")


@pytest.fixture
def no_download(monkeypatch):
  """Records and refuses any attempt of tfds to download or prepare a dataset."""
  DOWNLOAD_ATTEMPTS.clear()
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse_download)
  yield DOWNLOAD_ATTEMPTS


@pytest.mark.parametrize("name", ["mnist", "imagenet_resized/64x64"])
def test_missing_tfds_dataset_raises_a_clear_error_without_downloading(tmp_path, no_download, name):
  with pytest.raises(sources.DatasetNotFoundError) as error:
    data.dataset_info({"name": name, "data_dir": str(tmp_path)})
  message = str(error.value)
  assert f"'{name}'" in message and str(tmp_path) in message
  assert f"tfds build {name} --data_dir=DIR --file_format=array_record" in message
  assert not no_download and not [f for _, _, files in os.walk(tmp_path) for f in files]


@pytest.mark.parametrize("name, shape, num_classes", [
    ("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10),
    ("imagenet_resized/64x64", (64, 64, 3), 1000)])
def test_tfds_source_reads_mock_data_without_downloading(tmp_path, no_download, name, shape,
                                                         num_classes):
  config = {"name": name, "data_dir": str(tmp_path), "random_flip": True}
  with tfds.testing.mock_data(num_examples=40), pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse_download)
    assert data.dataset_info(config) == (shape, num_classes, 40)
    batches = take(data.make_train_iterator(config, 16, seed=0), 3)
    eval_batches = list(data.make_eval_iterator(config, 16))
  for batch in batches + eval_batches:
    assert batch["image"].shape[1:] == shape and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(num_classes))
    levels = batch["image"] * 127.5 + 127.5
    assert levels.min() >= 0 and levels.max() <= 255
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
  assert [len(b["label"]) for b in batches] == [16, 16, 16]
  assert [len(b["label"]) for b in eval_batches] == [16, 16, 8]
  assert not no_download


def test_unknown_split_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"no split 'validation'; choose one of \['test', 'train'\]"):
    data.make_eval_iterator(DIGITS, 8, split="validation")
