"""Samplers against the analytic teacher: convergence orders, exact identities,
Monte-Carlo moments, the DDIM encoder, guidance, sharding and trajectories."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffusion.analytic import GaussianMixture, analytic_denoiser, gaussian, gaussian_flow_map
from diffusion.parameterization import Prediction
from diffusion.processes import get_process
from sampling import SAMPLERS, decoders, get_grid, get_sampler, guided
from sampling.steps import ancestral_step, ddim_step, renoise_step, scales

MEAN = np.array([0.5, -1.0, 2.0], np.float32)
VAR = np.array([0.25, 1.0, 2.0], np.float32)
PROCESSES = ("cosine", "flow")

# A narrow class inside a broad one: guidance sharpens the class towards its mean. (With two
# separated equal-variance classes guidance pushes samples past the class mean instead.)
MIXTURE = GaussianMixture(weights=np.array([0.5, 0.5], np.float32),
                          means=np.array([[1.0, 0.0], [0.0, 0.0]], np.float32),
                          variances=np.array([[0.25, 0.25], [4.0, 4.0]], np.float32),
                          labels=np.array([0, 1]))


@functools.cache
def run(name, process_name, return_trajectory=False, guided_mixture=False, time_grid="uniform"):
  """A jitted `sampler(z, num_steps, rng[, cond, w])` on the analytic teacher of N(MEAN, VAR)
  (or of MIXTURE with guidance weight w); num_steps is traced unless the trajectory is returned."""
  process = get_process(process_name)
  denoise = analytic_denoiser(MIXTURE if guided_mixture else gaussian(MEAN, VAR), process)
  sampler = get_sampler(name)

  def fn(z, num_steps, rng, cond=None, w=None):
    den = guided(denoise, w, MIXTURE.num_classes) if guided_mixture else denoise
    return sampler(den, None, z, cond, process=process, num_steps=num_steps, rng=rng,
                   time_grid=time_grid, return_trajectory=return_trajectory)

  return jax.jit(fn, static_argnums=(1,) if return_trajectory else ())


def noise(n, seed=0, dim=3):
  return jax.random.normal(jax.random.key(seed), (n, dim))


def max_error(name, process_name, z, target, num_steps):
  return float(jnp.max(jnp.abs(run(name, process_name)(z, num_steps, None) - target)))


@pytest.mark.parametrize("process_name", PROCESSES)
def test_ode_samplers_converge_at_their_order(process_name):
  """From t = 1 to 0 against the exact flow map: DDIM and Euler first order, Heun second.

  The ODE samplers end with a DDIM step from t_1 to 0 (no network call at t = 0); its local
  error is O(sigma_{t_1}^2), so on the uniform grid RK4 is second order too (measured error
  ratios ~4 per halving), while on the quadratic grid, whose last interval is 1/N^2, it keeps
  its fourth order (ratios ~16)."""
  z = noise(64)
  target = gaussian_flow_map(MEAN, VAR, get_process(process_name), z, 1.0, 0.0)
  ddim = [max_error("ddim", process_name, z, target, n) for n in (8, 16, 32)]
  euler = [max_error("euler", process_name, z, target, n) for n in (8, 16, 32)]
  heun = [max_error("heun", process_name, z, target, n) for n in (8, 16, 32)]
  rk4 = [max_error("rk4", process_name, z, target, n) for n in (8, 16, 32)]
  for errors in (ddim, euler):
    for a, b in zip(errors, errors[1:]):
      assert 1.6 < a / b < 2.6, errors
  for errors in (heun, rk4):
    for a, b in zip(errors, errors[1:]):
      assert 3.2 < a / b < 5.5, errors
  rk4_quadratic = run("rk4", process_name, time_grid="quadratic")
  errors = [float(jnp.max(jnp.abs(rk4_quadratic(z, n, None) - target))) for n in (4, 8, 16)]
  for a, b in zip(errors, errors[1:]):
    assert a / b > 10.0, errors
  assert errors[-1] < 1e-4 and errors[-1] < heun[0] / 100, (errors, heun)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_no_decoder_evaluates_the_network_at_t0(process_name):
  """A denoiser that is NaN at t = 0 only leaves every decoder's output unchanged (to float32
  rounding: XLA fuses the extra select differently) and finite."""
  process = get_process(process_name)
  exact = analytic_denoiser(gaussian(MEAN, VAR), process)

  def broken_at_0(params, z, t, cond):
    pred = exact(params, z, t, cond)
    return jax.tree.map(lambda a: jnp.where(jnp.asarray(t) == 0, jnp.nan, a), pred)

  z, rng = noise(16, 15), jax.random.key(16)
  for name in decoders():
    sample = jax.jit(lambda den, z, rng, name=name: get_sampler(name)(
        den, None, z, process=process, num_steps=4, rng=rng), static_argnums=0)
    np.testing.assert_allclose(sample(broken_at_0, z, rng), sample(exact, z, rng), rtol=1e-6,
                               atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "rk4"])
def test_small_x_error_moves_samples_little(name):
  """An x-prediction error delta (eps_hat = (z - alpha x_hat) / sigma consistent with it) moves
  the 4-step sample by O(delta): under 3 delta (evaluated at t = 0, where sigma_0 = 4.5e-5,
  Heun's sample moved by 4.3 for delta = 1e-3)."""
  process, delta = get_process("cosine"), 1e-3
  exact = analytic_denoiser(gaussian(MEAN, VAR), process)

  def off_by_delta(params, z, t, cond):
    x = exact(params, z, t, cond).x + delta
    alpha, sigma = process.alpha_sigma(jnp.asarray(t))
    return Prediction(x=x, eps=(z - alpha * x) / sigma)

  z = noise(64, 17)
  sample = jax.jit(lambda den, z: get_sampler(name)(den, None, z, process=process, num_steps=4),
                   static_argnums=0)
  moved = float(jnp.max(jnp.abs(sample(off_by_delta, z) - sample(exact, z))))
  assert moved < 3 * delta, moved


def test_ddim_step_on_flow_is_euler_step():
  """On the linear flow z_s = (1 - s) x_hat + s eps_hat = z_t + (s - t)(eps_hat - x_hat)."""
  x, eps = noise(16, 1), noise(16, 2)
  t, s = 0.7, 0.45
  z_t = (1 - t) * x + t * eps
  z_s = ddim_step(Prediction(x, eps), 1 - s, s)
  np.testing.assert_allclose(z_s, z_t + (s - t) * (eps - x), atol=1e-6)
  z = noise(64)
  np.testing.assert_allclose(run("ddim", "flow")(z, 8, None), run("euler", "flow")(z, 8, None),
                             atol=2e-6)


def test_grids():
  i = jnp.arange(5)
  np.testing.assert_allclose(get_grid("uniform")(i, 4), [0, 0.25, 0.5, 0.75, 1])
  np.testing.assert_allclose(get_grid("quadratic")(i, 4), [0, 1 / 16, 0.25, 9 / 16, 1])
  z = noise(64)  # Heun keeps its order on the quadratic grid
  target = gaussian_flow_map(MEAN, VAR, get_process("cosine"), z, 1.0, 0.0)
  heun = run("heun", "cosine", time_grid="quadratic")
  errors = [float(jnp.max(jnp.abs(heun(z, n, None) - target))) for n in (8, 16, 32)]
  for a, b in zip(errors, errors[1:]):
    assert 3.2 < a / b < 5.5, errors


@pytest.mark.parametrize("process_name", PROCESSES)
def test_single_stochastic_steps_keep_the_marginals(process_name):
  """Linear in (x, eps, xi): with x_hat = x the steps give exactly q(z_s | x) = N(alpha_s x, sigma_s^2)."""
  process = get_process(process_name)
  (a_t, s_t), (a_s, s_s) = process.alpha_sigma(0.8), process.alpha_sigma(0.5)
  one = jnp.ones(())
  # z_t = a_t x + s_t eps; ancestral z_s = A z_t + B x_hat + C xi.
  coef = lambda z, x, xi: ancestral_step(z * one, Prediction(x * one, one), a_t, s_t, a_s, s_s, xi * one)
  big_a, big_b, big_c = coef(1, 0, 0), coef(0, 1, 0), coef(0, 0, 1)
  np.testing.assert_allclose(big_a * a_t + big_b, a_s, rtol=1e-5)
  np.testing.assert_allclose((big_a * s_t) ** 2 + big_c**2, s_s**2, rtol=1e-5)
  # renoise from s up to t: z_t = R z_s + C xi with z_s = a_s x + s_s eps.
  ratio, c = renoise_step(one, a_s, s_s, a_t, s_t, 0.0), renoise_step(0.0, a_s, s_s, a_t, s_t, one)
  np.testing.assert_allclose(ratio * a_s, a_t, rtol=1e-5)
  np.testing.assert_allclose((ratio * s_s) ** 2 + c**2, s_t**2, rtol=1e-5)


@pytest.mark.parametrize("name", ["ancestral", "stochastic"])
@pytest.mark.parametrize("process_name", PROCESSES)
def test_stochastic_samplers_match_data_moments(name, process_name):
  """Mean and variance of 4000 samples within 5 standard errors of N(MEAN, VAR).

  Both samplers are biased by O(1/N) with a finite step count (the variance of x given
  z_t is dropped); at N = 256 that bias is under one standard error here.
  """
  n = 4000
  x = run(name, process_name)(noise(n), 256, jax.random.key(7))
  mean_se, var_se = np.sqrt(VAR / n), VAR * np.sqrt(2.0 / (n - 1))
  assert np.all(np.abs(x.mean(0) - MEAN) < 5 * mean_se), (x.mean(0), MEAN)
  assert np.all(np.abs(x.var(0, ddof=1) - VAR) < 5 * var_se), (x.var(0), VAR)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_stochastic_sampler_is_ddim_jumps_and_renoising(process_name):
  """N = 1 is exactly DDIM; for N >= 2 the samples depend on rng; N = 2 is, by hand: a DDIM
  jump from t = 1 to t_a = 0, renoising to t_b = 1/2 with normal(fold_in(rng, 0)), then the
  deterministic DDIM step from 1/2 to 0."""
  process = get_process(process_name)
  denoise = analytic_denoiser(gaussian(MEAN, VAR), process)
  stochastic, ddim = run("stochastic", process_name), run("ddim", process_name)
  z, rng = noise(64, 12), jax.random.key(13)
  np.testing.assert_array_equal(stochastic(z, 1, rng), ddim(z, 1, None))
  for n in (2, 4):
    change = jnp.abs(stochastic(z, n, rng) - stochastic(z, n, jax.random.key(14)))
    assert float(jnp.min(jnp.max(change, axis=0))) > 0.1, (n, change)

  @jax.jit
  def by_hand(z):
    at_0, at_half = scales(process, 0.0), scales(process, 0.5)
    z_a = ddim_step(denoise(None, z, 1.0), *at_0)
    xi = jax.random.normal(jax.random.fold_in(rng, 0), z.shape)
    z_b = renoise_step(z_a, *at_0, *at_half, xi)
    return ddim_step(denoise(None, z_b, 0.5), *at_0)

  np.testing.assert_allclose(stochastic(z, 2, rng), by_hand(z), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("process_name", PROCESSES)
def test_ddim_encoder_then_decoder_returns_the_input(process_name):
  x = MEAN + np.sqrt(VAR) * noise(64, 3)
  encode, decode = run("ddim_encode", process_name), run("ddim", process_name)
  errors = [float(jnp.max(jnp.abs(decode(encode(x, n, None), n, None) - x))) for n in (8, 32, 128)]
  for a, b in zip(errors, errors[1:]):
    assert 3.0 < a / b < 5.0, errors  # first order: 4x the steps, ~1/4 the error
  assert errors[2] < 0.1, errors
  exact_code = gaussian_flow_map(MEAN, VAR, get_process(process_name), x, 0.0, 1.0)
  np.testing.assert_allclose(encode(x, 128, None), exact_code, atol=0.1)


def test_guidance_w0_is_the_conditional_model():
  denoise = analytic_denoiser(MIXTURE, get_process("cosine"))
  z, cond = noise(32, 4, dim=2), {"label": jnp.arange(32) % 3}  # labels 0, 1 and null
  plain = jax.jit(denoise)(None, z, 0.6, cond)
  guided_fn = jax.jit(lambda z, cond, w: guided(denoise, w, MIXTURE.num_classes)(None, z, 0.6, cond))
  for w in (0.0, jnp.zeros(32)):  # (1 + 0) c - 0 u = c; XLA may fuse the doubled batch
    pred = guided_fn(z, cond, w)   # differently, hence 1-ulp tolerance
    np.testing.assert_allclose(pred.x, plain.x, rtol=5e-7, atol=1e-7)
    np.testing.assert_allclose(pred.eps, plain.eps, rtol=5e-7, atol=1e-7)


def test_guidance_combines_both_branches_in_one_call():
  denoise = analytic_denoiser(MIXTURE, get_process("cosine"))
  labels_seen = []

  def counted(params, z, t, cond):
    labels_seen.append(cond["label"])
    return denoise(params, z, t, cond)

  z, label, w = noise(4, 5, dim=2), jnp.array([0, 1, 0, 1]), jnp.array([0.0, 1.0, 2.0, 3.0])
  pred = jax.jit(lambda z: guided(counted, w, 2)(None, z, 0.5, {"label": label}))(z)
  assert len(labels_seen) == 1 and labels_seen[0].shape == (8,)
  both = jax.jit(denoise)(None, jnp.concatenate([z, z]), 0.5, {"label": jnp.array([0, 1, 0, 1, 2, 2, 2, 2])})
  w = w[:, None]
  np.testing.assert_allclose(pred.x, (1 + w) * both.x[:4] - w * both.x[4:], atol=1e-6)
  np.testing.assert_allclose(pred.eps, (1 + w) * both.eps[:4] - w * both.eps[4:], atol=1e-6)
  labels_seen.clear()
  sample = lambda z: get_sampler("ddim")(guided(counted, 1.0, 2), None, z, {"label": label},
                                         process=get_process("cosine"), num_steps=4)
  jax.make_jaxpr(sample)(z)
  assert len(labels_seen) == 1  # one traced loop body with one network call in it


def test_guidance_at_static_w0_is_one_plain_network_call():
  """sample_images at sample.guidance_weight = 0 (a Python float) calls the network once per step
  on the plain batch (NFE 1 per step, as eval/sample_programs counts) and gives the doubled-batch
  result of a traced w = 0 to rounding; w = 1 runs one call on the doubled batch."""
  from training.samples import sample_images
  from eval.sample_programs import nfe
  from tests.tiny_config import tiny_teacher_config
  process = get_process("cosine")
  denoise = analytic_denoiser(MIXTURE, process)
  shapes = []

  def counted(params, z, t, cond):
    shapes.append(z.shape)
    return denoise(params, z, t, cond)

  config = tiny_teacher_config(**{"model.num_classes": 2, "data.shape": (2,)})
  draw = lambda w: sample_images(config, counted, process, None, jax.random.key(0), 8, 4, w)
  for w, batch in ((0.0, 8), (1.0, 16)):
    shapes.clear()
    jax.make_jaxpr(lambda: draw(w))()
    assert shapes == [(batch, 2)], (w, shapes)
    config.sample.guidance_weight = w
    assert nfe(config, "ddim", 4) == 4 * batch // 8
  plain, doubled = jax.jit(lambda: draw(0.0))(), jax.jit(draw)(jnp.float32(0.0))
  np.testing.assert_allclose(plain, doubled, rtol=1e-5, atol=1e-5)


def test_guidance_moves_samples_towards_the_class_mean():
  n = 2000
  sample = run("ddim", "cosine", guided_mixture=True)
  cond = {"label": jnp.zeros(n, jnp.int32)}
  distance = [float(jnp.mean(jnp.linalg.norm(sample(noise(n, 6, 2), 32, None, cond, w) - MIXTURE.means[0],
                                             axis=-1))) for w in (0.0, 1.0, 3.0)]
  assert distance[0] > distance[1] + 0.05 > distance[2] + 0.1, distance


@pytest.mark.parametrize("name", ["ddim", "ancestral", "stochastic", "heun"])
def test_sharded_over_8_devices_equals_1_device(name):
  z, rng = noise(64, 8), jax.random.key(9)
  outs = []
  for devices in (jax.devices()[:1], jax.devices()):
    sharding = NamedSharding(Mesh(np.asarray(devices), ("data",)), P("data"))
    out = run(name, "cosine")(jax.device_put(z, sharding), 16, rng)
    assert out.sharding.is_equivalent_to(sharding, out.ndim)
    outs.append(np.asarray(out))
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_trajectory_first_and_last_states(name):
  z, rng, n = noise(8, 10), jax.random.key(11), 4
  final, trajectory = run(name, "flow", return_trajectory=True)(z, n, rng)
  assert trajectory.shape == (n + 1,) + z.shape
  np.testing.assert_array_equal(trajectory[0], z)
  np.testing.assert_array_equal(trajectory[-1], final)
  np.testing.assert_allclose(final, run(name, "flow")(z, n, rng), atol=1e-6)


def test_argument_errors():
  with pytest.raises(ValueError, match="rng"):
    run("stochastic", "cosine")(noise(8), 4, None)
  with pytest.raises(ValueError, match="static"):  # a trajectory needs a static num_steps
    jax.jit(lambda z, n: get_sampler("ddim")(analytic_denoiser(gaussian(MEAN, VAR), get_process("flow")),
                                             None, z, process=get_process("flow"), num_steps=n,
                                             return_trajectory=True))(noise(8), 4)
