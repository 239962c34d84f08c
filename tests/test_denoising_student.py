"""Denoising Student (DESIGN.md 5.4): the student starts as the teacher's one-step readout at
t = 1, the stored pairs are the teacher's DDIM samples bit for bit, a student of the analytic
Gaussian teacher learns its affine DDIM map and approaches the exact flow map as the teacher's
steps grow, the best checkpoint is the lowest held-out loss, and training resumes bit-exactly."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from commands.pairs import write_offline_data
from commands.sample import sample_from_workdir
from configs import denoising_student as presets
from configs.denoising_student import student_config
from diffusion.analytic import analytic_denoiser, gaussian, gaussian_flow_map
from diffusion.networks import init_params
from distillation.denoising_student import DenoisingStudent, regression_loss
from infra import checkpoint
from infra.mesh import make_mesh
from infra.params import load_params
from tests.distill_fixtures import gmm_config, random_params
from tests.tiny_config import tiny_teacher_config
from training import offline, offline_source
from training.method import get_method
from training.trainer import Trainer

DATA_CONFIG = {"read_threads": 0, "num_workers": 0}


def distill_section(**overrides):
  section = dict(teacher_steps=4, time_grid="quadratic", loss="l2", num_pairs=96,
                 num_heldout=32, shard_size=40, generation_batch_size=8, pairs_seed=0,
                 guidance_weight=0.0)
  return ml_collections.ConfigDict(dict(section, **overrides))


def mlp_method(parameterization, **distill):
  """A Denoising Student of a 2-D MLP teacher."""
  config = gmm_config(method="denoising_student", parameterization=parameterization)
  config.distill = distill_section(**distill)
  return get_method(config)


def student_run_config(teacher_dir, pairs_dir, steps=6, **overrides):
  config = student_config(tiny_teacher_config(), teacher_steps=4, num_pairs=96, num_heldout=32,
                          loss="l2", batch_size=16, steps=steps, lr=1e-3, warmup_steps=2,
                          eval_every_steps=2, shard_size=40, generation_batch_size=8)
  config.teacher.workdir = teacher_dir
  config.offline_dir = pairs_dir
  config.data.read_threads = 0
  config.sample.num_samples = 8
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


@pytest.fixture(scope="module")
def pairs_dir(teacher_dir, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("pairs"))
  write_offline_data(student_run_config(teacher_dir, directory), "unused", make_mesh(1))
  return directory


@pytest.mark.parametrize("parameterization", ["v", "x", "eps"])
def test_student_starts_as_the_teachers_one_step_readout(parameterization):
  method = mlp_method(parameterization)
  teacher = random_params(method.network, (2,), jax.random.key(1))
  params = method.init(jax.random.key(2), teacher)
  eps = jax.random.normal(jax.random.key(3), (16, 2))
  student = method.student(params, eps, None)
  ones = jnp.ones((16,))
  if parameterization == "eps":   # the residual map x = z - eps_hat
    o = method.network.apply({"params": teacher}, eps, method.process.network_time(ones))
    np.testing.assert_array_equal(student, eps - o)
  else:
    np.testing.assert_array_equal(student, method.denoise(teacher, eps, ones).x)


def test_stored_pairs_are_the_teachers_ddim_samples(teacher_dir, pairs_dir):
  """Recomputed from the stored noise batch by batch (the writer's generation batch of 8),
  laid out over the writer's local devices, with the teacher's DDIM sampler."""
  method = get_method(student_run_config(teacher_dir, pairs_dir))
  teacher, _, _ = load_params(teacher_dir, mesh=make_mesh(1))
  mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("data",))
  rep, rows_sharded = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
                       for spec in ((), ("data",)))
  sample = jax.jit(method.teacher_sample, in_shardings=(rep, rows_sharded, None),
                   out_shardings=rows_sharded)
  teacher = offline.to_local(teacher, mesh)
  for split, count in (("train", 96), ("heldout", 32)):
    examples = offline_source.ShardedExamples(pairs_dir, split)
    rows = {k: np.stack([examples[i][k] for i in range(len(examples))]) for k in examples[0]}
    assert rows["noise"].shape == (count, 8, 8, 1) and rows["noise"].dtype == np.float32
    for i in range(0, count, 8):
      np.testing.assert_array_equal(np.asarray(sample(teacher, rows["noise"][i:i + 8], None)),
                                    rows["image"][i:i + 8])
    assert np.all(np.abs(rows["image"]) <= 1.0) and not np.any(rows["label"])
    assert np.std(rows["noise"]) > 0.9 and np.std(rows["image"]) > 0.1
  cost = json.load(open(os.path.join(pairs_dir, "cost.json")))
  assert cost["rows"] == 128 and cost["evaluations"] == 128 * 4 and cost["seconds"] > 0


def test_missing_pairs_name_the_command(teacher_dir, tmp_path):
  config = student_run_config(teacher_dir, str(tmp_path / "no_pairs"))
  with pytest.raises(offline.OfflineDataError, match=r"--mode=pairs --workdir="):
    Trainer(config, str(tmp_path / "run"), make_mesh(1))


def test_regression_loss_sums_pixels():
  a, b = jnp.zeros((2, 3, 3)), jnp.full((2, 3, 3), -2.0)
  np.testing.assert_array_equal(regression_loss(a, b, "l1"), [18.0, 18.0])
  np.testing.assert_array_equal(regression_loss(a, b, "l2"), [36.0, 36.0])
  with pytest.raises(ValueError, match="distill.loss"):
    regression_loss(a, b, "huber")


GAUSSIAN_MEAN, GAUSSIAN_VAR = np.array([0.3, -0.2], np.float32), np.array([0.04, 0.02], np.float32)


def analytic_student(tmp_path, teacher_steps):
  """Pairs of the exact Gaussian teacher's `teacher_steps`-step DDIM written with the shared
  writer, an MLP student trained on them through the grain source; returns (student, method)."""
  method = mlp_method("v", teacher_steps=teacher_steps, time_grid="uniform", num_pairs=4096,
                      num_heldout=512, shard_size=1024, generation_batch_size=512)
  method.teacher_denoise = analytic_denoiser(gaussian(GAUSSIAN_MEAN, GAUSSIAN_VAR),
                                             method.process)
  directory = tmp_path / f"pairs{teacher_steps}"
  offline.write(method.offline_data(), {}, directory)
  params = init_params(method.network, jax.random.key(0), (2,))
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, 800))

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(method.student_loss)(params, batch)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  batches = offline_source.make_train_iterator(directory, DATA_CONFIG, 128, 0, "")
  for _ in range(800):
    params, opt_state = step(params, opt_state, next(batches))
  heldout = next(offline_source.make_eval_iterator(directory, DATA_CONFIG, 512, ""))
  return params, method, heldout


@pytest.fixture(scope="module")
def analytic_students(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("analytic")
  return {n: analytic_student(tmp, n) for n in (2, 32)}


def test_student_of_the_gaussian_teacher_fits_its_heldout_pairs(analytic_students):
  for params, method, heldout in analytic_students.values():
    x = method.student(params, heldout["noise"], None)
    mse = float(jnp.mean((x - heldout["image"]) ** 2))
    assert mse < 0.01 * float(np.mean(GAUSSIAN_VAR)), mse


def test_student_approaches_the_exact_flow_map_as_teacher_steps_grow(analytic_students):
  errors, teacher_errors = {}, {}
  for n, (params, method, heldout) in analytic_students.items():
    exact = gaussian_flow_map(GAUSSIAN_MEAN, GAUSSIAN_VAR, method.process, heldout["noise"],
                              1.0, 0.0)
    errors[n] = float(jnp.mean((method.student(params, heldout["noise"], None) - exact) ** 2))
    teacher_errors[n] = float(jnp.mean((heldout["image"] - exact) ** 2))
  assert teacher_errors[32] < teacher_errors[2] / 10          # the pairs themselves converge
  assert errors[32] < errors[2] / 10, errors                   # and so does the student


def test_best_checkpoint_is_the_lowest_scripted_heldout_loss(monkeypatch, teacher_dir,
                                                               pairs_dir, tmp_path):
  script = iter([5.0, 2.0, 3.0, 1.0, 4.0, 6.0])       # at steps 2, 4, ..., 12
  monkeypatch.setattr(Trainer, "heldout_loss", lambda self, index: next(script))
  config = student_run_config(teacher_dir, pairs_dir, steps=12, keep_checkpoints=1,
                              checkpoint_every_steps=100)
  workdir = str(tmp_path / "run")
  Trainer(config, workdir, make_mesh(1)).run()
  assert sorted(checkpoint.require_checkpoint(workdir).all_steps()) == [8, 12]
  assert checkpoint.select_step(workdir)[0] == 8
  assert checkpoint.select_step(workdir, "latest")[0] == 12
  logged = json.load(open(os.path.join(workdir, "heldout.json")))
  assert logged == {str(s): v for s, v in zip(range(2, 13, 2), [5.0, 2.0, 3.0, 1.0, 4.0, 6.0])}
  images = sample_from_workdir(workdir, config.sample, make_mesh(1))
  assert os.path.exists(os.path.join(workdir, "samples", "ddim_1steps_ckpt8.png"))
  assert images.shape == (8, 8, 8, 1) and np.all(np.abs(images) <= 1.0)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.step)))]


def test_training_resumes_bit_exactly_and_agrees_on_eight_devices(teacher_dir, pairs_dir,
                                                                  tmp_path):
  full = Trainer(student_run_config(teacher_dir, pairs_dir), str(tmp_path / "full"),
                 make_mesh(1)).run()
  workdir = str(tmp_path / "resumed")
  Trainer(student_run_config(teacher_dir, pairs_dir, steps=3), workdir, make_mesh(1)).run()
  resumed = Trainer(student_run_config(teacher_dir, pairs_dir), workdir, make_mesh(1)).run()
  for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  eight = Trainer(student_run_config(teacher_dir, pairs_dir), str(tmp_path / "eight"),
                  make_mesh(8)).run()
  for a, b in zip(_leaves(full), _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  heldout = json.load(open(os.path.join(workdir, "heldout.json")))
  assert sorted(heldout, key=int) == ["2", "3", "4", "6"] and heldout["6"] < heldout["2"]


def test_sample_draws_z1_like_sample_images(teacher_dir):
  method = get_method(student_run_config(teacher_dir, ""))
  params, _, _ = load_params(teacher_dir, mesh=make_mesh(1))
  rng = jax.random.key(7)
  images = method.sample(params, rng, 8, {"num_steps": 1})
  z = jax.random.normal(jax.random.split(rng)[0], (8, 8, 8, 1))
  np.testing.assert_array_equal(images, jnp.clip(method.student(params, z, None), -1, 1))


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_presets_build_and_the_cifar10_preset_is_the_reference(preset):
  config = presets.get_config(preset)
  method = get_method(config)
  assert isinstance(method, DenoisingStudent)
  assert [s.args["num_steps"] for s in method.stages()] == [1]
  spec = method.offline_data()
  assert spec.num_train % spec.shard_size == 0 and spec.num_heldout % config.batch_size == 0
  assert spec.evaluations_per_example == config.distill.teacher_steps
  if preset == "cifar10":
    d, o = config.distill, config.optim
    assert (spec.num_train, spec.num_heldout, d.teacher_steps, d.time_grid, d.loss) == (
        1_024_000, 51_200, 100, "quadratic", "l1")
    assert (config.batch_size, config.num_train_steps, o.lr, o.warmup_steps, o.b2,
            o.ema_decay) == (512, 50_000, 2e-4, 5000, 0.98, 0.995)
