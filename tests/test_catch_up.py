"""Catch-Up Distillation and its flow-matching base (DESIGN.md 5.6): the loss's exact limits,
the Runge-Kutta targets against closed forms and the exact velocity of point-mass data, the
multi-head networks, a better one-step map than flow matching on a 2-D mixture, the presets
and the sampling contract, bit-exact resume and 1 vs 8 devices through the trainer."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from commands.pairs import write_offline_data
from configs import catch_up as catch_up_configs
from configs import teacher as teacher_configs
from diffusion.analytic import analytic_denoiser
from diffusion.heads import head_outputs
from diffusion.networks import build_network, init_params
from distillation.catch_up import (DELTAS, catch_up_loss, catch_up_steps, catch_up_targets,
                                   data_end_fallback)
from distillation.flow_matching import mse
from infra.mesh import make_mesh
from sampling import get_sampler
from tests.distill_fixtures import MIXTURE, gmm_batch, gmm_config, random_params, randomize
from tests.tiny_config import tiny_teacher_config
from training.method import get_method
from training.offline import OfflineDataError
from training.trainer import Trainer

E0 = 1e-5


def cud_config(method="catch_up", order=1, delta="uniform", num_steps=16, **kwargs):
  """A catch-up config for the 2-D mixture with an MLP."""
  c = catch_up_configs.catch_up_config(gmm_config(parameterization="velocity", **kwargs),
                                       order=order, delta=delta, num_steps=num_steps)
  c.method = method
  return c


@functools.cache
def random_method(order, method="catch_up"):
  """(method, params): an MLP with every leaf random, so all heads are active."""
  m = get_method(cud_config(method, order=order))
  return m, randomize(m.init(jax.random.key(0)), jax.random.key(1))


def test_delta_kinds():
  t = jnp.linspace(0.1, 1.0, 1000)
  uniform = catch_up_steps(jax.random.key(0), t, "uniform", 16)
  assert float(jnp.min(uniform)) >= 0 and float(jnp.max(uniform)) < 1 / 16
  assert abs(float(jnp.mean(uniform)) - 1 / 32) < 2e-3
  np.testing.assert_array_equal(catch_up_steps(None, t, "origin", 16), jnp.full_like(t, 1 / 16))
  np.testing.assert_allclose(catch_up_steps(None, t, "rule", 16), t / 16, rtol=1e-7)
  with pytest.raises(ValueError, match="Unknown cud.delta 'other'"):
    catch_up_steps(None, t, "other", 16)


def test_delta_zero_gradient_equals_flow_matching_gradient(monkeypatch):
  """With Delta = 0 the target is the prediction itself (no gradient), so the catch-up term
  adds nothing to the flow-matching gradient."""
  monkeypatch.setitem(DELTAS, "zero", lambda rng, t, n: jnp.zeros_like(t))
  cud = get_method(cud_config(delta="zero"))
  flow = get_method(cud_config("flow_matching"))
  params = randomize(cud.init(jax.random.key(0)), jax.random.key(1))
  batch = gmm_batch(jax.random.key(2), 128)
  grad = lambda m: jax.jit(jax.grad(lambda p: m.loss(p, {}, batch, jax.random.key(3), {})[0]))(
      params)
  for a, b in zip(jax.tree.leaves(grad(cud)), jax.tree.leaves(grad(flow)), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_loss_is_twice_the_flow_loss_where_t_minus_k_delta_passes_the_data_end(order):
  """Delta = 1/N with N = 1: t < e0 + k Delta for every t, so L = 2 sum_j MSE(head_j, eps - x)."""
  m = get_method(cud_config(order=order, delta="origin", num_steps=1))
  params = randomize(m.init(jax.random.key(0)), jax.random.key(1))
  batch, rng = gmm_batch(jax.random.key(2), 64), jax.random.key(3)
  loss, _ = jax.jit(m.loss)(params, {}, batch, rng, {})
  x, eps, t, z, cond = m.noised(batch, jax.random.split(rng)[0])
  heads = m.velocities(params, z, t, cond)
  assert len(heads) == order
  np.testing.assert_allclose(loss, 2 * sum(mse(p, eps - x) for p in heads), rtol=1e-6)
  # Per example too: the fallback replaces exactly the masked rows.
  targets = [jnp.full_like(x, 7.0)] * order
  keep = jnp.arange(64) % 2 == 0
  kept = data_end_fallback(targets, eps - x, keep)
  for target in kept:
    np.testing.assert_array_equal(target[keep], 7.0)
    np.testing.assert_array_equal(target[~keep], (eps - x)[~keep])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_point_mass_targets_equal_the_exact_velocity(order):
  """Data = mu: u(z, t) = (z - mu)/t exactly, and it is constant along its own Euler steps, so
  every Runge-Kutta target, and the fallback eps - x, equals u(z_t, t) for any Delta < t."""
  mu = jnp.asarray([0.7, -1.2])
  u = lambda z, t: (z - mu) / t[:, None]
  t_rng, h_rng, eps_rng = jax.random.split(jax.random.key(order), 3)
  t = jax.random.uniform(t_rng, (512,), minval=0.05, maxval=1.0)
  h = t * jax.random.uniform(h_rng, (512,), maxval=0.999)              # any Delta < t
  eps = jax.random.normal(eps_rng, (512, 2))
  x = jnp.broadcast_to(mu, eps.shape)
  z = (1 - t[:, None]) * x + t[:, None] * eps
  exact = u(z, t)
  np.testing.assert_allclose(exact, eps - x, rtol=1e-4, atol=1e-4)
  targets = catch_up_targets(u, z, t, h, order, E0)
  keep = t >= E0 + order * h
  assert int(jnp.sum(keep)) == 512 if order == 1 else 0 < int(jnp.sum(keep)) < 512
  for target in data_end_fallback(targets, eps - x, keep):
    np.testing.assert_allclose(target, exact, rtol=1e-4, atol=1e-4)
  for target in targets:                                               # the RK targets alone
    np.testing.assert_allclose(target[keep], exact[keep], rtol=1e-4, atol=1e-4)


def test_runge_kutta_targets_of_a_linear_field_match_their_closed_forms():
  """u(z, t) = a z + b t. With k1 = u(z, t) the slopes are
  RK1: v = k1;  RK2: v = (1 - a h/2) k1 - b h/2;
  RK3: v = (1 - a h/2 - a^2 h^2/48) k1 - b h/2 - a b h^2/48;
  and target_j = a (z - j h v) + b (t - j h)."""
  a, b = -0.7, 1.3
  u = lambda z, t: a * z + b * t[:, None]
  rng = jax.random.split(jax.random.key(0), 3)
  t = jax.random.uniform(rng[0], (64,), minval=0.5, maxval=1.0)
  h = jax.random.uniform(rng[1], (64,), maxval=0.15)                   # t - 3h > e0: no clamp
  z = jax.random.normal(rng[2], (64, 3))
  k1, hz, tz = u(z, t), h[:, None], t[:, None]
  slopes = {1: k1,
            2: (1 - a * hz / 2) * k1 - b * hz / 2,
            3: (1 - a * hz / 2 - a**2 * hz**2 / 48) * k1 - b * hz / 2 - a * b * hz**2 / 48}
  for order, v in slopes.items():
    targets = catch_up_targets(u, z, t, h, order, E0)
    assert len(targets) == order
    for j, target in enumerate(targets, start=1):
      np.testing.assert_allclose(target, a * (z - j * hz * v) + b * (tz - j * hz),
                                 rtol=1e-5, atol=1e-6)


def test_catch_up_loss_sums_both_terms_over_the_heads():
  rng = jax.random.split(jax.random.key(0), 3)
  heads = list(jax.random.normal(rng[0], (3, 8, 2)))
  targets = list(jax.random.normal(rng[1], (3, 8, 2)))
  velocity = jax.random.normal(rng[2], (8, 2))
  loss, metrics = catch_up_loss(heads, targets, velocity)
  expected_cu = sum(np.mean((np.asarray(p) - np.asarray(q)) ** 2) for p, q in zip(heads, targets))
  expected_fm = sum(np.mean((np.asarray(p) - np.asarray(velocity)) ** 2) for p in heads)
  np.testing.assert_allclose(metrics["catch_up_loss"], expected_cu, rtol=1e-6)
  np.testing.assert_allclose(metrics["flow_loss"], expected_fm, rtol=1e-6)
  np.testing.assert_allclose(loss, expected_cu + expected_fm, rtol=1e-6)


@pytest.mark.parametrize("model", [
    dict(name="unet", ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
         num_heads=1, dropout=0.0, num_classes=0, guidance=False),
    dict(name="mlp", hidden=16, depth=1, num_classes=0, guidance=False, dropout=0.0)])
def test_extra_heads_start_at_zero_and_leave_the_main_output_unchanged(model):
  shape = (8, 8, 1) if model["name"] == "unet" else (2,)
  single = build_network(model)
  multi = build_network(dict(model, output_heads=3))
  names = lambda net: set(jax.eval_shape(lambda: init_params(net, jax.random.key(0), shape)))
  assert sorted(names(multi) - names(single)) == ["head2", "head3"]
  z, time = jax.random.normal(jax.random.key(3), (4,) + shape), jnp.linspace(0.1, 0.9, 4)

  @jax.jit   # one compilation (they are slow for a UNet on a busy CPU)
  def outputs(params, key):
    multi_params = dict(init_params(multi, key, shape), **params)
    return (single.apply({"params": params}, z, time),
            multi.apply({"params": multi_params}, z, time))

  o, heads = outputs(random_params(single, shape, jax.random.key(1)), jax.random.key(2))
  assert isinstance(heads, tuple) and len(heads) == 3 and head_outputs(o) == (o,)
  np.testing.assert_array_equal(heads[0], o)
  for extra in heads[1:]:
    np.testing.assert_array_equal(extra, jnp.zeros_like(o))


def test_sampling_uses_the_configured_head_and_draws_z_like_sample_images():
  """One Euler step of head j from z_1 = normal(split(rng)[0]) is x = z_1 - u_j(z_1, 1)
  (clipped to [-1, 1] with sample.clip_x)."""
  m, params = random_method(3)
  rng = jax.random.key(4)
  z = jax.random.normal(jax.random.split(rng)[0], (16, 2))
  heads = m.velocities(params, z, jnp.ones((16,)))
  for head, clip_x in ((0, True), (1, False), (2, False), (3, True)):
    config = cud_config(order=3)
    config.cud.sample_head = head
    config.sample.clip_x = clip_x
    images = get_method(config).sample(params, rng, 16, {"num_steps": 1})
    x = z - heads[(head or 3) - 1]
    np.testing.assert_allclose(images, jnp.clip(x, -1, 1) if clip_x else x, rtol=1e-5,
                               atol=1e-6)
  config.cud.sample_head = 4
  with pytest.raises(ValueError, match="cud.sample_head=4 but the network has cud.order=3"):
    get_method(config)


def test_wrong_process_order_and_missing_section_are_refused():
  config = cud_config()
  config.diffusion.parameterization = "v"
  with pytest.raises(ValueError, match="set diffusion.process='flow' and "
                                       "diffusion.parameterization='velocity'"):
    get_method(config)
  config = cud_config(order=4)
  with pytest.raises(ValueError, match="cud.order=4: choose 1, 2 or 3"):
    get_method(config)
  config = cud_config()
  del config.cud
  with pytest.raises(ValueError, match="needs the `cud` config section: use "
                                       "--config=configs/catch_up.py:<preset>"):
    get_method(config)


def _train(method, steps, lr=3e-3):
  """Adam on fresh mixture batches; returns the params."""
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, k):
    batch = gmm_batch(jax.random.fold_in(jax.random.key(5), k), 256)
    grads = jax.grad(lambda p: method.loss(p, {}, batch, jax.random.fold_in(jax.random.key(7), k),
                                           {})[0])(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  params = method.init(jax.random.key(0))
  opt_state = tx.init(params)
  for k in range(steps):
    params, opt_state = step(params, opt_state, k)
  return params


def test_catch_up_one_step_map_beats_flow_matching_on_a_mixture():
  """After 300 equal updates, one Euler step of the CUD model (Delta = 1/4) lands closer to
  the exact flow map (RK4, 400 steps of the analytic velocity) than flow matching's, and
  below the floor of any flow-matching model: one Euler step of the EXACT velocity maps every
  z_1 to E[x]. Margins (measured mean squared distances: CUD 0.91, flow matching 2.46, floor
  2.21): CUD < 0.6 x each, and the paired per-point difference > 10 standard errors."""
  flow = get_method(cud_config("flow_matching"))
  cud = get_method(cud_config(delta="origin", num_steps=4))
  exact_denoise = analytic_denoiser(MIXTURE, flow.process)
  z = jax.random.normal(jax.random.key(9), (4096, 2))
  one_step = lambda denoise, params: get_sampler("euler")(denoise, params, z,
                                                          process=flow.process, num_steps=1)
  exact = get_sampler("rk4")(exact_denoise, None, z, process=flow.process, num_steps=400)
  error = lambda out: jnp.sum((out - exact) ** 2, axis=-1)
  cud_error = error(one_step(cud.denoise, _train(cud, 300)))
  flow_error = error(one_step(flow.denoise, _train(flow, 300)))
  floor = error(one_step(exact_denoise, None))
  diff = flow_error - cud_error
  assert float(jnp.mean(cud_error)) < 0.6 * float(jnp.mean(flow_error)), (cud_error.mean(),
                                                                         flow_error.mean())
  assert float(jnp.mean(cud_error)) < 0.6 * float(jnp.mean(floor)), (cud_error.mean(),
                                                                    floor.mean())
  assert float(jnp.mean(diff)) > 10 * float(jnp.std(diff)) / np.sqrt(len(diff))


@pytest.mark.parametrize("preset", ["digits", "fashion_mnist", "mnist", "cifar10"])
def test_presets(preset):
  config = catch_up_configs.get_config(preset)
  assert config.method == "catch_up" and config.cud.order == 1 and config.cud.delta == "uniform"
  assert config.cud.num_steps == 16 and config.cud.e0 == 1e-5
  assert (config.diffusion.process, config.diffusion.parameterization) == ("flow", "velocity")
  assert (config.sample.sampler, config.sample.num_steps) == ("euler", 16)
  stages = get_method(config).stages()
  assert [s.args for s in stages] == [{"num_steps": 16}]
  assert stages[0].num_updates == config.num_train_steps
  if preset == "digits":   # the digits teacher's network and budget, for the pipeline
    reference = teacher_configs.digits()
    assert dict(config.model) == dict(reference.model)
    assert config.num_train_steps == reference.num_train_steps
  if preset == "cifar10":  # the reference's DDPM++ run
    assert (config.model.ch, tuple(config.model.ch_mult), config.model.num_res_blocks) == (
        128, (2, 2, 2), 4)
    assert (config.batch_size, config.optim.lr, config.optim.ema_decay) == (128, 2e-4, 0.9999)
    assert config.num_train_steps == 500_000


def tiny_cud_config(num_train_steps, order=2):
  """The tiny digits MLP as a catch-up run with 2 heads."""
  config = catch_up_configs.catch_up_config(tiny_teacher_config(), order=order)
  config.num_train_steps = num_train_steps
  config.sample.num_steps = 2
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(
      (state.params, state.ema_params, state.target_params, state.opt_state, state.step)))]


def test_resume_is_bit_exact(tmp_path):
  full = Trainer(tiny_cud_config(6), str(tmp_path / "full"), make_mesh(1)).run()
  workdir = str(tmp_path / "interrupted")
  for stop in (3, 6):
    state = Trainer(tiny_cud_config(stop), workdir, make_mesh(1)).run()
    assert int(state.step) == stop
  for a, b in zip(_leaves(full), _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_one_and_eight_devices_agree(tmp_path):
  one = Trainer(tiny_cud_config(4), str(tmp_path / "one"), make_mesh(1)).run()
  eight = Trainer(tiny_cud_config(4), str(tmp_path / "eight"), make_mesh(8)).run()
  for a, b in zip(_leaves(one), _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# The one-step stage (method catch_up_onestep).

def onestep_gmm_config(order=2, trajectory_steps=16):
  config = catch_up_configs.onestep_config(
      cud_config(order=order), steps_per_point=2, num_trajectories=64, num_heldout=16,
      shard_size=32, generation_batch_size=16)
  config.onestep.trajectory_steps = trajectory_steps
  return config


def test_onestep_student_starts_as_one_euler_step_of_the_catch_up_model():
  teacher_method, teacher = random_method(2)
  config = onestep_gmm_config()
  config.sample.clip_x = False
  method = get_method(config)
  student = method.init(jax.random.key(0), teacher)
  rng = jax.random.key(5)
  z = jax.random.normal(jax.random.split(rng)[0], (64, 2))
  main = teacher_method.velocities(teacher, z, jnp.ones(64))[0]   # head 1, the main output
  np.testing.assert_allclose(method.sample(student, rng, 64, {"num_steps": 1}), z - main,
                             rtol=1e-5, atol=1e-6)
  # With ema = params the EMA term is zero and the loss is the regression alone.
  rows = method.generate_trajectories(teacher, jax.random.key(6), 64)
  stage = method.stages()[0].jax_args()
  loss, metrics = method.loss(student, {}, rows, jax.random.key(7), stage, ema=student)
  assert float(metrics["ema_loss"]) == 0.0
  target = rows["trajectory"][:, 8]
  np.testing.assert_allclose(loss, mse(rows["noise"] - teacher_method.velocities(
      teacher, rows["noise"], jnp.ones(64))[0], target), rtol=1e-5)


def test_trajectories_are_the_euler_sampler_x_hats():
  """Point 0 is one Euler step from t = 1, the last point is the 16-step Euler sample (each
  step's x_hat_0 of the head that samples), clipped to [-1, 1]."""
  teacher_method, teacher = random_method(2)
  method = get_method(onestep_gmm_config())
  rows = jax.jit(method.generate_trajectories, static_argnums=2)(teacher, jax.random.key(3), 32)
  z = jax.random.normal(jax.random.key(3), (32, 2))
  np.testing.assert_array_equal(rows["noise"], z)
  assert rows["trajectory"].shape == (32, 16, 2)
  euler = lambda n: get_sampler("euler")(teacher_method.denoise, teacher, z,
                                         process=method.process, num_steps=n)
  np.testing.assert_allclose(rows["trajectory"][:, 0], jnp.clip(euler(1), -1, 1), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(rows["trajectory"][:, 15], jnp.clip(euler(16), -1, 1), rtol=1e-5,
                             atol=1e-5)
  assert float(jnp.max(jnp.abs(rows["trajectory"]))) <= 1.0


def test_onestep_presets_and_refusals():
  for preset in ("digits", "fashion_mnist", "mnist", "cifar10"):
    config = catch_up_configs.get_config(f"{preset}_onestep")
    base = catch_up_configs.get_config(preset)
    assert config.method == "catch_up_onestep" and dict(config.model) == dict(base.model)
    assert tuple(config.onestep.curriculum) == (8, 11, 14) and config.onestep.ema_weight == 0.1
    stages = get_method(config).stages()
    assert [s.args for s in stages] == [{"num_steps": 1, "point": m} for m in (8, 11, 14)]
    assert config.num_train_steps == 0 and config.sample.num_steps == 1
  config = onestep_gmm_config()
  config.onestep.curriculum = (8, 16)
  with pytest.raises(ValueError, match=r"onestep.curriculum=\(8, 16\): points are "
                                       r"0..onestep.trajectory_steps - 1 = 15"):
    get_method(config)
  config = onestep_gmm_config()
  del config.onestep
  config.method = "catch_up_onestep"
  with pytest.raises(ValueError, match="needs the `onestep` config section"):
    get_method(config)


@pytest.fixture(scope="module")
def catch_up_run(tmp_path_factory):
  """A 4-update tiny catch-up run (2 heads) and its trajectories (4 Euler steps), shared."""
  root = tmp_path_factory.mktemp("cud")
  Trainer(tiny_cud_config(4), str(root / "cud"), make_mesh(1)).run()
  config = tiny_onestep_config(str(root / "cud"), str(root / "trajectories"), 6)
  write_offline_data(config, str(root / "unused"))
  return root


def tiny_onestep_config(teacher_dir, trajectories_dir, num_train_steps):
  """Curriculum points 1, 2, 3 of 4 Euler steps, 2 updates each."""
  config = catch_up_configs.onestep_config(
      tiny_cud_config(0), steps_per_point=2, num_trajectories=64, num_heldout=16,
      shard_size=32, generation_batch_size=16, curriculum=(1, 2, 3))
  config.onestep.trajectory_steps = 4
  config.teacher.workdir = teacher_dir
  config.offline_dir = trajectories_dir
  config.num_train_steps = num_train_steps
  config.checkpoint_every_steps = 2
  return config


def test_onestep_resume_across_curriculum_points_is_bit_exact(tmp_path, catch_up_run):
  teacher, trajectories = str(catch_up_run / "cud"), str(catch_up_run / "trajectories")
  full = Trainer(tiny_onestep_config(teacher, trajectories, 6), str(tmp_path / "full"),
                 make_mesh(1))
  full_state = full.run()
  assert full.step_fn._cache_size() == 1 and int(full_state.stage_index) == 2
  workdir = str(tmp_path / "interrupted")
  for stop in (2, 3, 6):          # the first boundary, mid-point 2, the end
    state = Trainer(tiny_onestep_config(teacher, trajectories, stop), workdir,
                    make_mesh(1)).run()
    assert int(state.step) == stop
  for a, b in zip(_leaves(full_state), _leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)


def test_onestep_one_and_eight_devices_agree(tmp_path, catch_up_run):
  teacher, trajectories = str(catch_up_run / "cud"), str(catch_up_run / "trajectories")
  one = Trainer(tiny_onestep_config(teacher, trajectories, 6), str(tmp_path / "one"),
                make_mesh(1)).run()
  eight = Trainer(tiny_onestep_config(teacher, trajectories, 6), str(tmp_path / "eight"),
                  make_mesh(8)).run()
  for a, b in zip(_leaves(one), _leaves(eight), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_onestep_without_trajectories_names_the_command(tmp_path, catch_up_run):
  config = tiny_onestep_config(str(catch_up_run / "cud"), "", 6)
  with pytest.raises(OfflineDataError, match="--mode=pairs"):
    Trainer(config, str(tmp_path / "run"), make_mesh(1))
