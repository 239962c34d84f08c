"""BOOT (data-free bootstrapping distillation): the signal-space update is a DDIM step, the
gradient flows only through g(eps, s) and g(eps, 1), the recursion's fixed point is the
N-step DDIM sample, students trained on analytic teachers approach the exact flow maps, the
guided teacher is the CFG combination, and through the trainer no dataset is opened, a
stopped run resumes bit for bit and 1 and 8 devices agree."""
import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.boot import boot_config, guided_student
from diffusion.analytic import analytic_denoiser, gaussian
from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.mlp import MLP
from diffusion.parameterization import Prediction
from diffusion.processes import CosineVP, LinearFlow
from diffusion.targets import signal_step_size, signal_target
from distillation import boot
from distillation.data_free import DataFreeConditioning, per_example
from infra import sources
from infra.mesh import make_mesh
from infra.params import load_params
from sampling import get_sampler
from sampling.steps import ddim_step, scales
from tests.distill_fixtures import MIXTURE, random_params
from tests.tiny_config import tiny_teacher_config
from training import data
from training.method import get_method
from training.trainer import Trainer

MEAN, VAR = np.array([0.5, -0.3], np.float32), np.array([0.25, 0.04], np.float32)
PROCESSES = {"cosine": CosineVP(), "flow": LinearFlow()}


def mlp_student(process=CosineVP(), hidden=64):
  """A BOOT student MLP read as the signal g = o (the x reading; velocity: g = eps - o)."""
  network = MLP(hidden=hidden, depth=2)
  reading = "velocity" if process.is_flow else "x"
  return network, make_denoiser(model_apply_fn(network), process, reading, signal=True)


def grid_times(rng, batch, n):
  """(t, s) of `batch` examples on the grid t_i = i/N."""
  return per_example(jax.random.split(rng, batch), lambda key: boot.grid_times(key, n))


def student_and_teacher(process, seed=0):
  """A randomised MLP student (so every layer acts) and the analytic Gaussian teacher."""
  network, student = mlp_student(process=process)
  params = random_params(network, (2,), jax.random.key(seed + 1))
  return student, params, analytic_denoiser(gaussian(MEAN, VAR), process)


@pytest.mark.parametrize("name", ["cosine", "flow"])
def test_signal_update_is_a_ddim_step(name):
  """alpha_s y_s_target + sigma_s eps == ddim_step(f_T(z_hat_t, t), alpha_s, sigma_s); and the
  loss regresses g(eps, s) on exactly that target (constant weighting, no boundary term)."""
  process = PROCESSES[name]
  student, params, teacher = student_and_teacher(process)
  n, batch = 8, 64
  eps = jax.random.normal(jax.random.key(2), (batch, 2))
  t, s = grid_times(jax.random.key(3), batch, n)
  assert float(jnp.min(s)) == 0.0 and float(jnp.max(t)) == 1.0
  alpha_t, sigma_t = process.alpha_sigma(t[:, None])
  alpha_s, sigma_s = scales(process, s[:, None])
  y_t = student(params, eps, t).x
  z_hat_t = alpha_t * y_t + sigma_t * eps
  f_t = teacher(None, z_hat_t, t)
  delta = signal_step_size(alpha_t, sigma_t, alpha_s, sigma_s)
  y_s = signal_target(y_t, f_t.x, delta)
  np.testing.assert_allclose(alpha_s * y_s + sigma_s * eps, ddim_step(f_t, alpha_s, sigma_s),
                             rtol=1e-5, atol=2e-5)
  # delta is exactly 1 where s = 0 (the target is then the teacher's x itself).
  at_zero = np.asarray(s == 0)
  np.testing.assert_array_equal(np.asarray(delta[:, 0])[at_zero], 1.0)
  np.testing.assert_array_equal(np.asarray(y_s)[at_zero], np.asarray(f_t.x)[at_zero])
  _, l_bs, _ = boot.bootstrap_loss(student, params, teacher, None, eps, None, t, s, process,
                                   "constant", 0.0)
  expected = jnp.mean(jnp.square(student(params, eps, s).x - y_s), axis=1)
  np.testing.assert_allclose(l_bs, expected, rtol=1e-4, atol=1e-7)


def test_delta_is_one_at_the_data_end():
  for process in PROCESSES.values():
    t = jnp.array([0.01, 0.5, 1.0])
    delta = signal_step_size(*process.alpha_sigma(t), *scales(process, jnp.zeros(3)))
    np.testing.assert_array_equal(delta, 1.0)


def test_gradient_flows_only_through_the_student_at_s_and_1():
  """The loss's gradient equals that of w ||g(eps, s) - C||^2 + lambda ||g(eps, 1) - F||^2 with
  the target C and F = f_T(eps, 1) precomputed constants; without the stop-gradients it differs."""
  process = CosineVP()
  student, params, teacher = student_and_teacher(process, seed=4)
  n, batch, lam = 4, 64, 0.7
  eps = jax.random.normal(jax.random.key(6), (batch, 2))
  t, s = grid_times(jax.random.key(7), batch, n)
  alpha_t, sigma_t = process.alpha_sigma(t[:, None])
  delta = signal_step_size(alpha_t, sigma_t, *scales(process, s[:, None]))

  def target(p):
    y_t = student(p, eps, t).x
    return signal_target(y_t, teacher(None, alpha_t * y_t + sigma_t * eps, t).x, delta)

  const_target, f_1 = target(params), teacher(None, eps, jnp.ones(batch)).x

  def reference(p, tgt):
    l_bs = jnp.mean(jnp.square(student(p, eps, s).x - tgt(p)), axis=1) / jnp.square(delta[:, 0])
    l_bc = jnp.mean(jnp.square(student(p, eps, jnp.ones(batch)).x - f_1), axis=1)
    return jnp.mean(l_bs + lam * l_bc)

  loss = lambda p: jnp.mean(boot.bootstrap_loss(student, p, teacher, None, eps, None, t, s,
                                                process, "inverse_delta_sq", lam)[0])
  got = jax.grad(loss)(params)
  want = jax.grad(reference)(params, lambda p: const_target)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
  through_target = jax.grad(reference)(params, target)
  gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
            zip(jax.tree.leaves(got), jax.tree.leaves(through_target)))
  assert gap > 1e-3


@pytest.mark.parametrize("name", ["cosine", "flow"])
def test_fixed_point_of_the_recursion_is_the_ddim_sample(name):
  """The student that holds the recursion's fixed point on the grid (y_1 = f_T(eps, 1), then one
  signal step per interval) has zero loss at every t_i, and its y_0 is the N-step DDIM sample."""
  process = PROCESSES[name]
  teacher = analytic_denoiser(gaussian(MEAN, VAR), process)
  n, batch = 8, 32
  eps = jax.random.normal(jax.random.key(8), (batch, 2))
  table = [teacher(None, eps, 1.0).x]                       # y at t_N, t_{N-1}, ..., t_0
  for i in range(n, 0, -1):
    alpha_t, sigma_t = process.alpha_sigma(jnp.float32(i / n))
    delta = signal_step_size(alpha_t, sigma_t, *scales(process, jnp.float32((i - 1) / n)))
    f_t = teacher(None, alpha_t * table[-1] + sigma_t * eps, i / n).x
    table.append(signal_target(table[-1], f_t, delta))
  table = jnp.stack(table[::-1])                            # index i holds y at t_i

  def fixed_point(params, z, t, cond=None):                 # z = [eps; eps] or eps
    i = jnp.round(jnp.asarray(t) * n).astype(jnp.int32)
    rows = jnp.arange(z.shape[0]) % batch
    return Prediction(x=params[i, rows], eps=z)

  ddim = get_sampler("ddim")(teacher, None, eps, process=process, num_steps=n)
  np.testing.assert_allclose(table[0], ddim, rtol=1e-5, atol=1e-5)
  for i in range(1, n + 1):
    t = jnp.full((batch,), i / n)
    total, _, _ = boot.bootstrap_loss(fixed_point, table, teacher, None, eps, None, t,
                                      jnp.full((batch,), (i - 1) / n), process)
    np.testing.assert_allclose(total, 0.0, atol=1e-8)
  perturbed = table.at[0].add(0.1)
  total, _, _ = boot.bootstrap_loss(fixed_point, perturbed, teacher, None, eps, None,
                                    jnp.full((batch,), 1 / n), jnp.zeros(batch), process)
  assert float(jnp.min(total)) > 1e-3


def test_guided_teacher_is_the_cfg_combination():
  """f_T = (1 + w) x_c - w x_u: per example for a w-conditioned student, at the fixed w
  otherwise, the conditional model alone at w = 0; labels uniform over the real classes."""
  process = CosineVP()
  teacher = analytic_denoiser(MIXTURE, process)
  z = jax.random.normal(jax.random.key(11), (600, 2))
  t = jax.random.uniform(jax.random.key(12), (600,), minval=0.2, maxval=0.9)
  per_example = DataFreeConditioning(num_classes=3, w_range=(0.5, 3.0))
  cond = per_example.draw(jax.random.key(13), 600)
  assert set(np.unique(cond["label"])) == {0, 1, 2}
  assert 0.5 <= float(jnp.min(cond["w"])) and float(jnp.max(cond["w"])) <= 3.0
  x_c = teacher(None, z, t, {"label": cond["label"]}).x
  x_u = teacher(None, z, t, {"label": jnp.full((600,), 3)}).x
  w = cond["w"][:, None]
  np.testing.assert_allclose(per_example.teacher(teacher)(None, z, t, cond).x,
                             (1 + w) * x_c - w * x_u, rtol=1e-5, atol=1e-5)
  fixed = DataFreeConditioning(num_classes=3, guidance_weight=2.0)
  labels = fixed.draw(jax.random.key(14), 600)
  assert set(labels) == {"label"}
  np.testing.assert_allclose(fixed.teacher(teacher)(None, z, t, cond).x, 3 * x_c - 2 * x_u,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(DataFreeConditioning(3).teacher(teacher)(None, z, t, cond).x, x_c)
  assert DataFreeConditioning().draw(jax.random.key(15), 4) is None


# --- Through the trainer: a tiny class-conditional digits teacher, a w-conditioned student.


def boot_run_config(teacher_dir, num_train_steps, tmp_path):
  """N = 2 then 4 (3 updates each), w ~ U[0, 4]; the data_dir does not exist."""
  config = guided_student(boot_config(tiny_teacher_config(**{"model.num_classes": 10}), "2,4",
                                      steps_per_stage=3, lr=1e-3, fidelity_samples=8))
  config.teacher.workdir = teacher_dir
  config.data.data_dir = str(tmp_path / "no_such_dir")
  config.num_train_steps = num_train_steps
  config.checkpoint_every_steps = 2
  return config


@contextlib.contextmanager
def refusing_datasets():
  """Any attempt to build, open or describe a dataset fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError("a data-free run opened a dataset")
  with pytest.MonkeyPatch.context() as patch:
    for module, name in [(sources, "get_source"), (data, "load_source"),
                         (data, "dataset_info"), (data, "make_train_iterator"),
                         (data, "make_train_dataset"), (data, "make_eval_iterator")]:
      patch.setattr(module, name, refuse)
    yield


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.step, state.stage_index)))]


@pytest.fixture(scope="module")
def full_run(cond_teacher_dir, tmp_path_factory):
  """(trainer, final state) of the whole 6-step schedule on one device, no dataset openable."""
  tmp_path = tmp_path_factory.mktemp("boot_full")
  with refusing_datasets():
    trainer = Trainer(boot_run_config(cond_teacher_dir, 6, tmp_path), str(tmp_path / "run"),
                      make_mesh(1))
    return trainer, trainer.run()


def test_student_starts_as_the_teacher_with_a_zero_w_embedding(cond_teacher_dir, tmp_path):
  method = get_method(boot_run_config(cond_teacher_dir, 6, tmp_path))
  teacher, _, _ = load_params(cond_teacher_dir, mesh=make_mesh(1))
  student = method.init(jax.random.key(0), teacher)
  z = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  label, t = jnp.array([0, 3, 7, 9]), jnp.array([0.0, 0.3, 0.6, 1.0])
  raw = lambda net, params, w: net.apply({"params": params}, z, t, label=label, w=w)
  for w in (None, jnp.full((4,), 2.5)):
    np.testing.assert_allclose(raw(method.network, student, w),
                               raw(method.teacher_network, teacher, None), rtol=1e-6, atol=1e-7)
  # The output o is read through the teacher's v at t = 1 with eps = the z slot: g = alpha_1
  # eps - sigma_1 o at every t (lambda_1 = -20, alpha_1^2 = sigmoid(-20)); at t = 1 that is the
  # teacher's own x-prediction f_T(eps, 1).
  cond = {"label": label, "w": jnp.zeros(4)}
  pred = method.denoise(student, z, t, cond)
  np.testing.assert_array_equal(pred.eps, z)
  alpha_1, sigma_1 = np.sqrt(1 / (1 + np.exp(20.0))), np.sqrt(1 / (1 + np.exp(-20.0)))
  o = method.network.apply({"params": student}, z, method.process.network_time(t), label=label,
                           w=cond["w"])
  np.testing.assert_allclose(pred.x, alpha_1 * z - sigma_1 * o, rtol=1e-6, atol=1e-6)
  ones = jnp.ones(4)
  np.testing.assert_allclose(method.denoise(student, z, ones, cond).x,
                             method.teacher_denoise(teacher, z, ones, {"label": label}).x,
                             rtol=1e-6, atol=1e-6)


def test_no_dataset_resume_is_bit_exact_one_compiled_step(full_run, cond_teacher_dir, tmp_path):
  full, full_state = full_run
  assert full.method.needs_data is False
  assert full.step_fn._cache_size() == 1          # one compiled step served N = 2 and N = 4
  assert int(full_state.stage_index) == 1
  workdir = str(tmp_path / "interrupted")
  with refusing_datasets():
    with pytest.raises(AssertionError, match="opened a dataset"):   # the guard sees a teacher run
      Trainer(tiny_teacher_config(), str(tmp_path / "teacher"), make_mesh(1))
    for stop in (2, 3, 5, 6):                      # mid-stage, the boundary, mid-stage, the end
      state = Trainer(boot_run_config(cond_teacher_dir, stop, tmp_path), workdir,
                      make_mesh(1)).run()
      assert int(state.step) == stop
  for a, b in zip(_leaves(full_state), _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)
  metrics = json.load(open(os.path.join(workdir, "stage_metrics.json")))
  assert sorted(metrics) == ["N2", "N4"]
  assert all(np.isfinite(m["fidelity_psnr"]) for m in metrics.values())


def test_one_and_eight_devices_agree(full_run, cond_teacher_dir, tmp_path):
  with refusing_datasets():
    eight = Trainer(boot_run_config(cond_teacher_dir, 6, tmp_path), str(tmp_path / "eight"),
                    make_mesh(8)).run()
  for a, b in zip(_leaves(full_run[1]), _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sample_is_one_student_call_on_the_shared_noise(cond_teacher_dir, tmp_path):
  """sample() = g(eps, 0, c) with eps drawn as training.samples.sample_images draws z_1 and its labels
  and w (clipped to [-1, 1] with sample.clip_x); a fixed-w student refuses another sampling w."""
  config = boot_run_config(cond_teacher_dir, 6, tmp_path)
  config.sample.update(guidance_weight=1.5, clip_x=False)
  method = get_method(config)
  params = random_params(method.network, (8, 8, 1), jax.random.key(3))
  rng = jax.random.key(4)
  images = method.sample(params, rng, 6, {"num_steps": 1})
  eps = jax.random.normal(jax.random.split(rng)[0], (6, 8, 8, 1))
  cond = {"label": jnp.arange(6), "w": jnp.full((6,), 1.5)}
  o = method.network.apply({"params": params}, eps, method.process.network_time(jnp.zeros(6)),
                           label=cond["label"], w=cond["w"])
  alpha_1, sigma_1 = np.sqrt(1 / (1 + np.exp(20.0))), np.sqrt(1 / (1 + np.exp(-20.0)))
  np.testing.assert_allclose(images, alpha_1 * eps - sigma_1 * o, rtol=1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(images))) > 1.0
  config.sample.clip_x = True
  np.testing.assert_array_equal(get_method(config).sample(params, rng, 6, {"num_steps": 1}),
                                jnp.clip(images, -1.0, 1.0))
  config.model.guidance = False
  config.boot.guidance_weight = 2.0
  with pytest.raises(ValueError, match="fixed w=2.0"):
    get_method(config).sample(params, rng, 6, {"num_steps": 1})


def test_config_errors_name_the_fix(tmp_path):
  config = boot_config(tiny_teacher_config(), "4,x", steps_per_stage=3, lr=1e-3)
  with pytest.raises(ValueError, match="boot.schedule"):
    get_method(config)
  config = boot_config(tiny_teacher_config(), "4", steps_per_stage=3, lr=1e-3)
  config.boot.guidance_weight = 1.0
  with pytest.raises(ValueError, match="class-conditional teacher"):
    get_method(config)
  config.boot.guidance_weight = 0.0
  config.boot.time_sampling = "log"
  with pytest.raises(Exception, match="log"):
    get_method(config)


def test_eps_teacher_is_refused_with_the_reason():
  """An eps teacher's x at t = 1 divides by alpha_1: BOOT refuses it and names the fix."""
  config = boot_config(tiny_teacher_config(**{"diffusion.parameterization": "eps"}), "4",
                       steps_per_stage=3, lr=1e-3)
  with pytest.raises(ValueError, match="eps-parameterised teacher.*alpha_1.*v-, x- or velocity"):
    get_method(config)


@pytest.mark.parametrize("sampling", ["grid", "continuous"])
@pytest.mark.parametrize("n", [8, 32, 128])
def test_the_sampled_output_keeps_its_share_of_the_default_weight(sampling, n):
  """Under the preset default weighting the s = 0 examples (the only ones that train g(eps, 0),
  the sample) carry >= 0.8/N of the total L_BS weight in expectation; the signal-space
  1/delta^2 would leave them < 1/(4N) of it (0.024 at N = 8, ~1e-5 at N = 128). delta = 1 - alpha_t sigma_s / (sigma_t alpha_s)
  is written out with the cosine schedule's alpha / sigma = 1 / tan(a t + b)."""
  weighting = boot_config(tiny_teacher_config(), "4", steps_per_stage=3, lr=1e-3).boot.weighting
  keys = jax.random.split(jax.random.key(n), 200_000)
  t, s = per_example(keys, lambda key: boot.TIME_SAMPLERS[sampling](key, n))
  t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
  at_zero = s == 0
  assert abs(at_zero.mean() - 1 / n) < 0.1 / n
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  alpha_over_sigma = lambda u: 1 / np.tan(a * u + b)       # exp(lambda / 2), lambda in [-20, 20]
  delta = np.where(at_zero, 1.0, 1.0 - alpha_over_sigma(t) / alpha_over_sigma(s))
  weights = np.asarray(boot.DELTA_WEIGHTINGS[weighting](jnp.asarray(delta, jnp.float32)))
  assert weights[at_zero].sum() / weights.sum() >= 0.8 / n
  inverse = 1 / np.square(delta)
  assert inverse[at_zero].sum() / inverse.sum() < 0.25 / n
