"""Consistency distillation: f(z, t_min) = z exactly for any parameters, the scalings are the
reference's EDM ones mapped onto z_t = alpha_t x + sigma_t eps, a copied teacher starts at its
x-prediction, the teacher steps chain into the project's samplers, gradients reach only the
student, a student of the analytic Gaussian teacher approaches the exact flow map in one
step, and through the trainer a stopped run resumes bit for bit and 1 and 8 devices agree."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from commands.sample import sample_from_workdir
from configs import consistency as consistency_configs
from configs import teacher as teacher_configs
from diffusion.analytic import analytic_denoiser, gaussian, gaussian_flow_map
from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.mlp import MLP
from diffusion.networks import init_params
from diffusion.processes import CosineVP, LinearFlow
from distillation import consistency
from infra.mesh import make_mesh
from sampling import get_sampler
from sampling.steps import renoise_step
from tests.distill_fixtures import gmm_batch, gmm_config, random_params
from tests.tiny_config import tiny_teacher_config
from training.method import get_method
from training.trainer import Trainer

MEAN, VAR = np.array([0.5, -0.3], np.float32), np.array([0.25, 0.04], np.float32)
PROCESSES = {"cosine": CosineVP(), "flow": LinearFlow()}
PARAMETERIZATIONS = {"cosine": ("v", "eps", "x"), "flow": ("velocity",)}


def mlp_denoiser(process, parameterization="v", num_classes=0):
  network = MLP(hidden=64, depth=2, num_classes=num_classes)
  return network, make_denoiser(model_apply_fn(network), process, parameterization)


def consistency_section(**overrides):
  return ml_collections.ConfigDict(dict(
      dict(schedule=(8,), steps_per_stage=10, teacher_solver="heun", time_grid="uniform",
           target="online", mu=0.9, distance="l2", weighting="uniform", sigma_data=0.5,
           sample_ts="", n_of_k=(),
           fidelity_samples=16), **overrides))


def gmm_consistency_config(**overrides):
  c = gmm_config(method="consistency")
  c.consistency = consistency_section(**overrides)
  c.sample.update(sampler="consistency", num_steps=1, clip_x=False)   # 2-D data: no clipping
  c.eval.num_steps = "1,2,4"
  return c


@pytest.mark.parametrize("name", ["cosine", "flow"])
@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_boundary_is_the_identity_for_any_parameters(name, sigma_data):
  """f(z, t_min) == z bit for bit (random parameters, labels, dropout, large z); not so at t > 0."""
  process = PROCESSES[name]
  z = 10.0 * jax.random.normal(jax.random.key(0), (64, 2))
  label = {"label": jnp.arange(64) % 4}
  for i, parameterization in enumerate(PARAMETERIZATIONS[name]):
    network, denoise = mlp_denoiser(process, parameterization, num_classes=3)
    f = consistency.consistency_function(denoise, process, sigma_data)
    for seed in range(3):
      params = random_params(network, (2,), jax.random.key(10 * i + seed), scale=1.0)
      np.testing.assert_array_equal(f(params, z, jnp.zeros(64), label).x, z)
      np.testing.assert_array_equal(f(params, z, 0.0, label, rng=jax.random.key(3)).x, z)
      assert float(jnp.min(jnp.abs(f(params, z, 1e-3, label).x - z))) > 0.0


@pytest.mark.parametrize("name", ["cosine", "flow"])
def test_scalings_are_the_reference_ones_in_edm_sigma(name):
  """c_skip = (alpha_0 / alpha_t) sd^2 / ((S - S_0)^2 + sd^2), c_out = alpha_0 sd (S - S_0) /
  sqrt(S^2 + sd^2) with S = sigma_t / alpha_t (the reference's scalings, z-space output)."""
  process, sd = PROCESSES[name], 0.5
  t = np.linspace(0.0, 0.98, 50)
  alpha, sigma = (np.asarray(a, np.float64) for a in process.alpha_sigma(t))
  alpha_0, sigma_0 = (float(a) for a in process.alpha_sigma(0.0))
  big_s, big_s0 = sigma / alpha, sigma_0 / alpha_0
  c_skip = alpha_0 / alpha * sd**2 / ((big_s - big_s0) ** 2 + sd**2)
  c_out = alpha_0 * sd * (big_s - big_s0) / np.sqrt(big_s**2 + sd**2)
  ours = consistency.boundary_scalings(process, t, sd)
  np.testing.assert_allclose(ours[0], c_skip, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(ours[1], c_out, rtol=2e-5, atol=1e-6)
  assert np.all(np.isfinite(consistency.boundary_scalings(process, 1.0, sd)))


@pytest.mark.parametrize("parameterization", ["v", "eps", "x"])
def test_a_copied_teacher_starts_at_its_x_prediction(parameterization):
  """Away from the boundary f = x_hat up to the sigma_min shift (~1e-4 at t >= 0.2); for a
  v-network with sd = 1, F is the raw output negated."""
  process = CosineVP()
  network, denoise = mlp_denoiser(process, parameterization)
  params = random_params(network, (2,), jax.random.key(1))
  z = jax.random.normal(jax.random.key(2), (256, 2))
  t = jax.random.uniform(jax.random.key(3), (256,), minval=0.2, maxval=1.0)
  f = consistency.consistency_function(denoise, process, 0.5)(params, z, t).x
  np.testing.assert_allclose(f, denoise(params, z, t).x, rtol=1e-3, atol=1e-3)
  if parameterization == "v":
    alpha, sigma = process.alpha_sigma(t[:, None])
    o = network.apply({"params": params}, z, process.network_time(t))
    np.testing.assert_allclose(consistency.preconditioned_output(
        denoise(params, z, t), alpha, sigma, 1.0), -o, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", ["ddim", "euler", "heun"])
def test_teacher_steps_chained_over_the_grid_are_the_sampler(solver):
  """N per-example teacher steps t_i -> t_{i-1} from z_1 = the registered N-step sampler."""
  process, n = CosineVP(), 6
  network, denoise = mlp_denoiser(process)
  params = random_params(network, (2,), jax.random.key(1))
  z = jax.random.normal(jax.random.key(2), (32, 2))
  step = jax.jit(lambda z, t, s: consistency.teacher_step(solver, denoise, params, z, t, s,
                                                          None, process))
  chained = z
  for i in range(n, 0, -1):
    chained = step(chained, jnp.full((32,), i / n), jnp.full((32,), (i - 1) / n))
  sampled = get_sampler(solver)(denoise, params, z, process=process, num_steps=n)
  np.testing.assert_allclose(chained, sampled, rtol=1e-4, atol=2e-4)


def test_gradients_reach_only_the_student():
  """With the EMA target, d loss / d ema and d loss / d teacher are exactly zero; the online
  target gives the gradient of the EMA target at ema = params (SG on theta-)."""
  config = gmm_consistency_config(target="ema")
  method = get_method(config)
  init = lambda seed: random_params(method.network, (2,), jax.random.key(seed + 1))
  params, ema, teacher = init(0), init(2), init(4)
  batch, stage = gmm_batch(jax.random.key(6), 128), {"grid": jnp.asarray(8)}
  loss = lambda p, e, f: method.loss(p, f, batch, jax.random.key(7), stage, e)[0]
  g_params, g_ema, g_teacher = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, ema, teacher)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves((g_ema, g_teacher)))
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(g_params))
  online = get_method(gmm_consistency_config(target="online"))
  g_online = jax.jit(jax.grad(lambda p: online.loss(p, teacher, batch, jax.random.key(7),
                                                    stage, ema)[0]))(params)
  g_at_params = jax.jit(jax.grad(loss))(params, jax.tree.map(jnp.copy, params), teacher)
  for a, b in zip(jax.tree.leaves(g_online), jax.tree.leaves(g_at_params), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def train_on_gaussian(process, n, steps, lr=2e-3, batch=256, time_grid="quadratic", mu=0.0):
  """Adam on L_CD^N (heun teacher) with the analytic Gaussian teacher; the target is the
  online params (mu = 0) or their EMA at rate mu."""
  network, denoise = mlp_denoiser(process)
  student = consistency.consistency_function(denoise, process, 0.5)
  teacher = analytic_denoiser(gaussian(MEAN, VAR), process)
  tx = optax.adam(optax.linear_schedule(lr, 0.0, steps))
  data = gaussian(MEAN, VAR)

  @jax.jit
  def update(params, target, opt_state, rng):
    x_rng, loss_rng = jax.random.split(rng)
    x, _ = data.sample(x_rng, batch)
    grads = jax.grad(lambda p: jnp.mean(consistency.consistency_loss(
        student, p, p if mu == 0 else target, teacher, None, x, None, loss_rng, n, process,
        time_grid=time_grid)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, jax.tree.map(lambda e, p: mu * e + (1 - mu) * p, target, params), opt_state

  params = init_params(network, jax.random.key(0), (2,))
  initial, target, opt_state = params, params, tx.init(params)
  for i in range(steps):
    params, target, opt_state = update(params, target, opt_state, jax.random.key(1000 + i))
  return student, initial, params


def rms(a, b):
  return float(jnp.sqrt(jnp.mean(jnp.square(a - b))))


def test_student_of_the_gaussian_teacher_approaches_the_flow_map_in_one_step():
  """N = 8 on the quadratic grid (the 8-step Heun teacher is 0.006 RMS from the exact map),
  2000 updates: f(z_1, 1) within 0.07 RMS of the exact probability-flow map 1 -> 0 (measured
  0.045) and under 0.15 times the untrained student's error (0.56)."""
  process = CosineVP()
  student, initial, params = train_on_gaussian(process, n=8, steps=2000)
  z = jax.random.normal(jax.random.key(9), (4000, 2))
  exact = gaussian_flow_map(MEAN, VAR, process, z, 1.0, 0.0)
  trained, untrained = rms(student(params, z, 1.0).x, exact), rms(student(initial, z, 1.0).x,
                                                                  exact)
  assert trained < 0.07 and trained < 0.15 * untrained, (trained, untrained)


def test_consistency_sampler_renoises_from_the_boundary():
  """2 steps: x_1 = f(z_1, 1), z = renoise of x_1 from t_min to t = 1/2, x = f(z, 1/2); 1 step
  = f(z_1, 1)."""
  process = CosineVP()
  network, denoise = mlp_denoiser(process)
  params = random_params(network, (2,), jax.random.key(1))
  f = consistency.consistency_function(denoise, process, 0.5)
  z, rng = jax.random.normal(jax.random.key(2), (16, 2)), jax.random.key(3)
  sampler = get_sampler("consistency")
  x_1 = f(params, z, 1.0).x
  np.testing.assert_allclose(sampler(f, params, z, process=process, num_steps=1, rng=rng),
                             x_1 / process.alpha_sigma(0.0)[0], rtol=1e-5, atol=1e-6)
  z_half = renoise_step(x_1, *process.alpha_sigma(0.0), *process.alpha_sigma(0.5),
                        jax.random.normal(jax.random.fold_in(rng, 0), z.shape))
  np.testing.assert_allclose(sampler(f, params, z, process=process, num_steps=2, rng=rng),
                             f(params, z_half, 0.5).x, rtol=1e-5, atol=1e-6)


# --- Through the trainer: a tiny digits teacher, N = 2 then 4 with the EMA target.


def run_config(teacher_dir, num_train_steps):
  config = consistency_configs.consistency_config(
      tiny_teacher_config(), (2, 4), steps_per_stage=3, lr=1e-3, batch_size=16, ema_decay=0.9,
      target="ema", mu=0.5, fidelity_samples=8)
  config.sample.update(num_samples=8, batch_size=8)
  config.teacher.workdir = teacher_dir
  config.num_train_steps = num_train_steps
  config.checkpoint_every_steps = 2
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.target_params, state.opt_state, state.step,
       state.stage_index)))]


@pytest.fixture(scope="module")
def full_run(teacher_dir, tmp_path_factory):
  """(leaves of the final state, compiled step count) of the uninterrupted 1-device run."""
  trainer = Trainer(run_config(teacher_dir, 6), str(tmp_path_factory.mktemp("full")),
                    make_mesh(1))
  return _leaves(trainer.run()), trainer.step_fn._cache_size()


def test_resume_is_bit_exact_and_sampling_works(teacher_dir, full_run, tmp_path):
  full_leaves, compiled_steps = full_run
  assert compiled_steps == 1                       # one compiled step served N = 2 and N = 4
  workdir = str(tmp_path / "interrupted")
  for stop in (2, 3, 5, 6):                        # mid-stage, the boundary, mid-stage, the end
    state = Trainer(run_config(teacher_dir, stop), workdir, make_mesh(1)).run()
    assert int(state.step) == stop
  for a, b in zip(full_leaves, _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)
  metrics = json.load(open(os.path.join(workdir, "stage_metrics.json")))
  assert sorted(metrics) == ["N2", "N4"]
  assert all(np.isfinite(m["fidelity_psnr"]) for m in metrics.values())
  sample_config = run_config(teacher_dir, 6).sample
  sample_config.update(num_steps=4, num_samples=8)
  images = sample_from_workdir(workdir, sample_config, make_mesh(1))
  assert images.shape == (8, 8, 8, 1) and np.all(np.abs(images) <= 1.0)


def test_one_and_eight_devices_agree(teacher_dir, full_run, tmp_path):
  eight = Trainer(run_config(teacher_dir, 6), str(tmp_path / "eight"), make_mesh(8)).run()
  for a, b in zip(full_run[0], _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sample_uses_the_shared_noise():
  """sample() at 1 step = f(z_1, 1) with z_1 drawn as training.samples.sample_images draws it."""
  method = get_method(gmm_consistency_config())
  params = random_params(method.network, (2,), jax.random.key(1))
  rng = jax.random.key(2)
  z_1 = jax.random.normal(jax.random.split(rng)[0], (8, 2))
  np.testing.assert_allclose(method.sample(params, rng, 8, {"num_steps": 1}),
                             method.student(params, z_1, 1.0).x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["digits", "fashion_mnist", "cifar10", "imagenet64"])
def test_presets_follow_their_teacher(preset):
  config = consistency_configs.get_config(preset)
  teacher = teacher_configs.get_config(preset)
  assert config.method == "consistency"
  assert dict(config.model) == dict(teacher.model, dropout=0.0)
  stages = get_method(config).stages()
  assert config.num_train_steps == 0 and stages[-1].args["num_steps"] == 1
  assert config.sample.sampler == "consistency"


def test_config_errors_name_the_fix():
  config = gmm_consistency_config(schedule=(0,))
  with pytest.raises(ValueError, match="consistency.schedule"):
    get_method(config)
  with pytest.raises(ValueError, match="teacher_solver 'midpoint'"):
    get_method(gmm_consistency_config(teacher_solver="midpoint"))
  with pytest.raises(ValueError, match="Unknown consistency distance 'lpips'"):
    get_method(gmm_consistency_config(distance="lpips"))
  with pytest.raises(ValueError, match="Unknown consistency.weighting 'lognormal'"):
    get_method(gmm_consistency_config(weighting="lognormal"))
  config = gmm_consistency_config()
  del config.consistency
  with pytest.raises(ValueError, match="configs/consistency.py:<preset>"):
    get_method(config)
