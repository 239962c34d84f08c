"""Score identity Distillation: the time mappings, the stop-gradients (each loss moves only
its own network), the fixed point f_psi = f_phi, convergence of the generator to Gaussian
data under the exact teacher, and data-free runs through the trainer (no dataset opened,
bit-exact resume, 1 vs 8 devices, per-network learning rates)."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import sid as sid_configs
from configs.base import base_config
from diffusion.analytic import analytic_denoiser, gaussian
from diffusion.losses import weighted_x_mse
from diffusion.networks import build_denoiser, init_params
from diffusion.processes import CosineVP, get_process, karras_logsnr, shifted_cosine
from distillation.data_free import DataFreeConditioning, example_keys
from distillation.sid import SiDSettings, generate, init_time, sid_generator_loss, sid_losses
from infra import sources
from infra.mesh import make_mesh, shard_batch
from infra.params import load_params
from tests.distill_fixtures import gmm_config, random_params
from tests.tiny_config import tiny_teacher_config
from training import data
from training.method import get_method
from training.trainer import Trainer

MEAN = np.array([0.5, -0.3], np.float32)
VAR = np.array([0.3, 0.08], np.float32)


def mlp_config(**model):
  c = base_config("digits")
  c.data.shape = (2,)
  c.model = ml_collections.ConfigDict(dict(name="mlp", hidden=64, depth=2, num_classes=0,
                                           guidance=False, dropout=0.0))
  c.model.update(model)
  return c


@pytest.mark.parametrize("process", [CosineVP(), shifted_cosine(32, 16), get_process("flow")])
def test_time_of_logsnr_inverts_the_schedule(process):
  t = jnp.linspace(0.02, 0.98, 49)
  np.testing.assert_allclose(process.time_of_logsnr(process.logsnr(t)), t, atol=2e-6)


def test_edm_noise_levels_map_to_logsnr():
  """The ladder's ends are sigma_min, sigma_max; t_init has sigma_t / alpha_t = init_sigma."""
  sigma = jnp.exp(-0.5 * karras_logsnr(jnp.array([0.0, 1.0])))
  np.testing.assert_allclose(sigma, [0.002, 80.0], rtol=1e-5)
  process = CosineVP()
  alpha, sigma = process.alpha_sigma(init_time(process, 2.5))
  np.testing.assert_allclose(sigma / alpha, 2.5, rtol=1e-5)


def test_generator_loss_at_alpha_one_is_the_projected_score_difference():
  """alpha = 1: (x_real - x_fake) . (x_fake - x_g) / mean|x_g - x_real| (pixel means)."""
  x_g, x_real, x_fake = jax.random.normal(jax.random.key(0), (3, 4, 5))
  expected = (np.mean((x_real - x_fake) * (x_fake - x_g), axis=1)
              / np.mean(np.abs(x_g - x_real), axis=1))
  np.testing.assert_allclose(sid_generator_loss(x_g, x_real, x_fake, 1.0), expected, rtol=1e-5)


@functools.cache
def random_networks(guidance):
  """(denoise, teacher f_phi, params {'generator', 'fake_score'}, teacher params, cond):
  MLPs with random (not zero) weights on 2-D mixture data, guided teacher if `guidance`."""
  config = gmm_config("sid", num_classes=3 if guidance else 0, guidance=guidance)
  student_network, process, denoise = build_denoiser(config)
  network, _, teacher_denoise = build_denoiser(config, guidance=False)
  teacher_params = random_params(network, (2,), jax.random.key(1))
  student = lambda k: random_params(student_network, (2,), k)
  params = {"generator": student(jax.random.key(2)), "fake_score": student(jax.random.key(3))}
  section = ml_collections.ConfigDict(dict(w_min=0.0, w_max=4.0, guidance_weight=0.0))
  conditioning = DataFreeConditioning.from_config(config.model, section)
  cond = conditioning.draw(jax.random.key(6), 16)
  return denoise, conditioning.teacher(teacher_denoise), params, teacher_params, cond, process


def losses_fn(guidance, which):
  denoise, teacher, _, teacher_params, cond, process = random_networks(guidance)

  def fn(params):
    keys = example_keys(jax.random.key(4), jnp.arange(16))
    losses = sid_losses(denoise, teacher, params, teacher_params, cond, keys,
                        jax.random.key(5), process, SiDSettings(), (2,))
    return jnp.mean(losses[which])

  return fn


def norms(grads):
  return {name: float(optax.tree.norm(tree)) for name, tree in grads.items()}


@pytest.mark.parametrize("guidance", [False, True])
def test_each_loss_moves_only_its_own_network(guidance):
  """L_theta's gradient is exactly zero in the fake score's subtree, L_psi's in the
  generator's; each is non-zero in its own (paper Sec. 4: psi fixed in L_theta, x_g
  a stop-gradient in L_psi)."""
  params = random_networks(guidance)[2]
  generator_grads = jax.grad(losses_fn(guidance, 0))(params)
  fake_score_grads = jax.grad(losses_fn(guidance, 1))(params)
  for leaf in jax.tree.leaves(generator_grads["fake_score"]):
    np.testing.assert_array_equal(leaf, 0.0)
  for leaf in jax.tree.leaves(fake_score_grads["generator"]):
    np.testing.assert_array_equal(leaf, 0.0)
  assert norms(generator_grads)["generator"] > 1e-3
  assert norms(fake_score_grads)["fake_score"] > 1e-3


def test_generator_stops_where_the_fake_score_equals_the_teacher():
  """f_psi = f_phi (same network, same weights) makes L_theta and its gradient vanish:
  the generator's distribution already matches as far as the scores can tell."""
  denoise, _, params, _, _, process = random_networks(False)
  teacher_params = params["fake_score"]
  keys = example_keys(jax.random.key(4), jnp.arange(16))

  def generator_loss(p):
    losses = sid_losses(denoise, denoise, p, teacher_params, None, keys, jax.random.key(5),
                        process, SiDSettings(), (2,))
    return jnp.mean(losses[0])

  loss, grads = jax.value_and_grad(generator_loss)(params)
  assert float(loss) == 0.0
  moving = jax.grad(losses_fn(False, 0))(params)     # the same step with a different teacher
  assert norms(grads)["generator"] < 1e-6 * norms(moving)["generator"]


@pytest.fixture(scope="module")
def gaussian_run():
  """SiD on N(MEAN, diag(VAR)) data with the exact teacher: MLP generator and fake score,
  both initialised from an MLP fitted to the data (the 'teacher checkpoint'); 1000 joint
  Adam updates (b1 = 0, lr 1e-3 annealed to 0), batch 256. Returns (G at init, G trained)."""
  config = mlp_config()
  network, process, denoise = build_denoiser(config)
  teacher = analytic_denoiser(gaussian(MEAN, VAR), process)

  def fit_loss(p, rng):
    x_rng, t_rng, e_rng = jax.random.split(rng, 3)
    x = MEAN + np.sqrt(VAR) * jax.random.normal(x_rng, (256, 2))
    t = jax.random.uniform(t_rng, (256,))
    z = process.noise(x, t, jax.random.normal(e_rng, x.shape))
    return jnp.mean(weighted_x_mse(x, denoise(p, z, t).x, process.logsnr(t), "snr+1"))

  def sid_loss(p, rng):
    keys = example_keys(rng, jnp.arange(256))
    losses = sid_losses(denoise, teacher, p, None, None, keys, rng, process, SiDSettings(),
                        (2,))
    return jnp.mean(losses[0]) + jnp.mean(losses[1])

  def adam(loss, params, tx, steps, seed):
    def body(carry, i):
      p, opt = carry
      grads = jax.grad(loss)(p, jax.random.fold_in(jax.random.key(seed), i))
      updates, opt = tx.update(grads, opt)
      return (optax.apply_updates(p, updates), opt), None
    return jax.lax.scan(body, (params, tx.init(params)), jnp.arange(steps))[0][0]

  fitted = jax.jit(lambda p: adam(fit_loss, p, optax.adam(2e-3), 2000, 1))(
      init_params(network, jax.random.key(0), (2,)))
  tx = optax.adam(optax.linear_schedule(1e-3, 0.0, 1000), b1=0.0, b2=0.999)
  trained = jax.jit(lambda p: adam(sid_loss, p, tx, 1000, 2))(
      {"generator": fitted, "fake_score": fitted})
  draw = lambda p: generate(denoise, p, jax.random.normal(jax.random.key(7), (8192, 2)), None,
                            process, 2.5)
  return np.asarray(draw(fitted)), np.asarray(draw(trained["generator"]))


def moments_error(x):
  """(max |mean - MEAN|, max |cov - diag(VAR)|) of samples x."""
  return (float(np.max(np.abs(x.mean(0) - MEAN))),
          float(np.max(np.abs(np.cov(x.T) - np.diag(VAR)))))


def test_generator_samples_match_the_data_mean_and_covariance(gaussian_run):
  """Margins 0.06 (mean) and 0.03 (covariance entries; VAR = 0.3, 0.08); the sampling
  error of 8192 samples is ~0.006 and ~0.005. The generator at init (the teacher's
  posterior mean at t_init, a shrunk copy of the data) misses the covariance by ~0.29."""
  initial, trained = gaussian_run
  mean_error, cov_error = moments_error(trained)
  assert mean_error < 0.06 and cov_error < 0.03, (mean_error, cov_error)
  assert moments_error(initial)[1] > 0.2


# --- Through the trainer: a tiny digits teacher, an MLP, 16 examples per batch. ---


def sid_run_config(teacher_dir, num_train_steps, **sid):
  config = sid_configs.sid_config(tiny_teacher_config(), num_updates=6, lr=1e-3, batch_size=16,
                                  ema_decay=0.9)
  config.teacher.workdir = teacher_dir
  config.num_train_steps = num_train_steps
  config.checkpoint_every_steps = 3
  config.sid.update(sid)
  # A dataset that does not exist: a data-free run must not look for it.
  config.data.update(name="cifar10", data_dir="/nonexistent/sid-test-data")
  return config


@pytest.fixture
def no_dataset(monkeypatch):
  """Every way into the data layer raises."""
  def refuse(*args, **kwargs):
    raise AssertionError("a data-free SiD run opened a dataset")
  for module, name in [(data, "make_train_iterator"), (data, "load_source"),
                       (data, "dataset_info"), (sources, "get_source")]:
    monkeypatch.setattr(module, name, refuse)


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.opt_state, state.step)))]


def teacher_params(teacher_dir):
  return jax.device_get(load_params(teacher_dir, mesh=make_mesh(1))[0])


def differs(tree_a, tree_b):
  return any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(jax.device_get(tree_a)), jax.tree.leaves(tree_b), strict=True))


def test_resume_is_bit_exact_and_no_dataset_is_opened(tmp_path, teacher_dir, no_dataset):
  full = Trainer(sid_run_config(teacher_dir, 6), str(tmp_path / "full"), make_mesh(1)).run()
  workdir = str(tmp_path / "interrupted")
  for stop in (3, 6):
    state = Trainer(sid_run_config(teacher_dir, stop), workdir, make_mesh(1)).run()
    assert int(state.step) == stop
  for a, b in zip(_leaves(full), _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)
  teacher = teacher_params(teacher_dir)
  assert differs(full.params["generator"], teacher) and differs(full.params["fake_score"],
                                                                teacher)


def test_one_and_eight_devices_agree(tmp_path, teacher_dir, no_dataset):
  """The loss and gradient at one state agree to float round-off; whole runs agree within
  a tenth of one update (lr = 1e-3) for the generator: its first gradients are sums of
  nearly cancelling per-example terms (f_psi starts equal to f_phi, where L_theta's
  gradient is exactly zero), and Adam with b1 = 0 scales them to full size, so
  summation-order differences show at that scale. The fake score agrees tightly."""
  one = Trainer(sid_run_config(teacher_dir, 4), str(tmp_path / "one"), make_mesh(1))
  one_state = one.run()
  eight_state = Trainer(sid_run_config(teacher_dir, 4), str(tmp_path / "eight"),
                        make_mesh(8)).run()
  for name, atol in (("fake_score", 1e-5), ("generator", 1e-4)):
    for a, b in zip(*(jax.tree.leaves(jax.device_get(s.params[name]))
                      for s in (one_state, eight_state)), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)

  method, state = one.method, jax.device_get(one_state)
  batch = {"index": np.arange(16, dtype=np.int32)}
  grad_fn = jax.value_and_grad(lambda p, b: method.loss(p, state.frozen, b, jax.random.key(9),
                                                        one.stage_args(0))[0])
  (loss_1, grads_1), (loss_8, grads_8) = [
      jax.jit(grad_fn)(state.params, shard_batch(make_mesh(n), batch)) for n in (1, 8)]
  np.testing.assert_allclose(loss_1, loss_8, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(a))) + 1e-12)


def test_per_network_learning_rates(tmp_path, teacher_dir, no_dataset):
  """fake_score_lr_scale = 0 leaves the fake score at the teacher; the generator moves."""
  state = Trainer(sid_run_config(teacher_dir, 2, fake_score_lr_scale=0.0), str(tmp_path),
                  make_mesh(1)).run()
  teacher = teacher_params(teacher_dir)
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params["fake_score"])),
                  jax.tree.leaves(teacher), strict=True):
    np.testing.assert_array_equal(a, b)
  assert differs(state.params["generator"], teacher)


def test_sample_starts_from_the_shared_noise(teacher_dir):
  """At init G is the teacher read at t_init, and `sample` feeds it the z_1 that
  training.samples.sample_images draws from the same rng (clipped with sample.clip_x)."""
  config = sid_run_config(teacher_dir, 6)
  method = get_method(config)
  # Weights x3: outputs past +-1, so clipping shows whatever the fixture teacher learnt.
  teacher = jax.tree.map(lambda a: 3.0 * a, teacher_params(teacher_dir))
  rng = jax.random.key(3)
  params = method.init(jax.random.key(0), teacher)
  z_1 = jax.random.normal(jax.random.split(rng)[0], (8,) + tuple(config.data.shape))
  t = init_time(method.process, config.sid.init_sigma)
  _, sigma = method.process.alpha_sigma(t)
  expected = method.denoise(teacher, sigma * z_1, jnp.full((8,), t)).x
  assert np.max(np.abs(expected)) > 1.0    # so clipping shows
  for clip_x in (False, True):
    method.config.sample.clip_x = clip_x
    images = method.sample(params, rng, 8, {"num_steps": 1})
    np.testing.assert_allclose(images, np.clip(expected, -1, 1) if clip_x else expected,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(sid_configs.PRESETS))
def test_presets_build_a_data_free_method(preset):
  config = sid_configs.get_config(preset)
  method = get_method(config)
  assert not method.needs_data and method.needs_teacher
  assert [s.args for s in method.stages()] == [{"num_steps": 1}]
  guided_teacher = bool(config.model.guidance or config.sid.guidance_weight)
  assert method.teacher_evaluations_per_example(method.stages()[0]) == (
      2.0 if guided_teacher else 1.0)


def test_paper_settings_of_the_cifar10_preset():
  c = sid_configs.get_config("cifar10")
  assert (c.sid.alpha, c.sid.tmax, c.sid.init_sigma, c.batch_size) == (1.2, 0.8, 2.5, 256)
  assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.grad_clip) == (1e-5, 0.0, 0.999, np.inf)
  assert c.sid.num_updates * c.batch_size == pytest.approx(500e6, rel=1e-6)


def test_unknown_fake_score_time_is_a_clear_error():
  config = sid_configs.get_config("digits")
  config.sid.fake_score_time = "bogus"
  with pytest.raises(Exception, match="bogus"):
    get_method(config)


def test_fixed_w_generator_samples_only_at_its_w():
  config = sid_configs.get_config("digits_cond")
  config.model.guidance = False                  # learns the teacher at the fixed w = 2
  config.sid.guidance_weight = 2.0
  config.sample.guidance_weight = 3.0
  with pytest.raises(ValueError, match="fixed w=2.0"):
    get_method(config).sample(None, jax.random.key(0), 4, {"num_steps": 1})
