"""Multistep consistency sampling on the training grid: the Karras grid in the process's time,
the sampler's times are training-grid points (refused otherwise), its renoising is the paper's
Algorithm 1, the exact consistency function of a Gaussian samples the data's moments at 1, 2
and 4 steps, and every preset's evaluation step counts lie on its training grid."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import consistency as consistency_configs
from diffusion.analytic import analytic_denoiser, gaussian, gaussian_flow_map
from diffusion.networks import init_params
from diffusion.parameterization import Prediction
from diffusion.processes import CosineVP, LinearFlow
from distillation import consistency
from sampling import get_sampler
from sampling.grids import check_on_training_grid, karras, on_training_grid
from tests.test_consistency import mlp_denoiser, train_on_gaussian
from training.method import get_method

MEAN, VAR = np.array([0.5, -0.3], np.float32), np.array([0.25, 0.04], np.float32)


@pytest.mark.parametrize("process", [CosineVP(), LinearFlow()], ids=["cosine", "flow"])
def test_karras_grid_is_the_papers_formula(process):
  """t_0 = 0; for i >= 1 sigma_t / alpha_t = (0.002^(1/7) + (i-1)/(N-1) (80^(1/7) -
  0.002^(1/7)))^7 (Karras et al. eq. (5), rho = 7), increasing in i."""
  n = 17
  grid = karras(process)
  t = np.array([float(grid(i, n)) for i in range(n + 1)])
  assert t[0] == 0.0 and np.all(np.diff(t) > 0)
  alpha, sigma = process.alpha_sigma(jnp.asarray(t[1:]))
  by_hand = np.array([(0.002 ** (1 / 7) + (i - 1) / (n - 1) * (80 ** (1 / 7) - 0.002 ** (1 / 7)))
                      ** 7 for i in range(1, n + 1)])
  np.testing.assert_allclose(np.asarray(sigma / alpha), by_hand, rtol=2e-3)
  assert abs(by_hand[0] - 0.002) < 1e-12 and abs(by_hand[-1] - 80) < 1e-9


def test_n_of_k_is_the_papers_curriculum():
  """N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1 at s0 = 2, s1 = 150: 2 at k = 0,
  107 at k = K/2 (sqrt(11402.5) = 106.8), 151 at K; its stages cover K updates in order."""
  assert [int(consistency.n_of_k(k, 1000, 2, 150)) for k in (0, 500, 1000)] == [2, 107, 151]
  stages = consistency.curriculum(1000, 2, 150)
  sizes = [n for n, _ in stages]
  assert sum(u for _, u in stages) == 1000 and sizes == sorted(set(sizes)) and sizes[0] == 2
  config = consistency_configs.get_config("digits")
  config.consistency.update(n_of_k=(2, 15), steps_per_stage=100)   # N = 2..16
  method = get_method(config)
  assert [(s.args["grid"], s.num_updates) for s in method.stages()] == stages_of(100, 2, 15)
  config.consistency.n_of_k = (3, 2)
  with pytest.raises(ValueError, match="consistency.n_of_k=.* must be \\(s0, s1\\)"):
    get_method(config)


def stages_of(total, s0, s1):
  """(N, updates) of the curriculum, counted by hand from the formula."""
  ns = [int(np.ceil(np.sqrt(k / total * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1)
        for k in range(total)]
  return [(n, ns.count(n)) for n in sorted(set(ns))]


def test_sampler_times_are_training_grid_points():
  """n steps of an N = 16 grid evaluate f at t_16, t_{16 - 16/n}, ...; explicit indices
  (reference `--ts` counting from the noise end) override one step count."""
  grid = lambda i, n: jnp.asarray(i, jnp.float32) / n * 0.5 + 0.25 * (jnp.asarray(i) > 0)
  g = on_training_grid(grid, 16)
  for n, indices in ((1, [16, 0]), (2, [16, 8, 0]), (4, [16, 12, 8, 4, 0])):
    got = [float(g(i, n)) for i in range(n, -1, -1)]
    np.testing.assert_allclose(got, [float(grid(i, 16)) for i in indices])
  g = on_training_grid(grid, 16, ts=(0, 11))
  np.testing.assert_allclose([float(g(i, 2)) for i in (2, 1, 0)],
                             [float(grid(i, 16)) for i in (16, 5, 0)])
  np.testing.assert_allclose(float(g(3, 4)), float(grid(12, 16)))   # other counts: even
  check_on_training_grid(3, 16, ts=(0, 4, 9))
  with pytest.raises(ValueError, match="3 sampling steps leave the N = 16 training grid"):
    check_on_training_grid(3, 16)


def exact_consistency_function(process):
  """f(z, t) = the Gaussian's exact probability-flow map from t to the boundary 0."""
  def f(params, z, t, cond=None):
    x = gaussian_flow_map(MEAN, VAR, process, z, t, 0.0)
    alpha, sigma = process.alpha_sigma(jnp.asarray(t, jnp.float32))
    return Prediction(x=x, eps=(z - alpha * x) / sigma)
  return f


def test_renoising_is_algorithm_1_written_out():
  """4 steps on the N = 16 Karras grid against Song et al.'s Algorithm 1 in EDM's sigma:
  x = f(x_T, T); for each later tau: x_tau = x + sqrt(tau^2 - eps^2) xi (x read in sigma
  space, x_sigma = z / alpha), x = f(alpha_tau x_tau, tau)."""
  process = CosineVP()
  f = lambda params, z, t, cond=None: Prediction(x=jnp.tanh(z * (1.0 + t)), eps=z)
  grid = karras(process)
  z, rng = jax.random.normal(jax.random.key(0), (64, 2)), jax.random.key(1)
  got = get_sampler("consistency")(f, None, z, process=process, num_steps=4, rng=rng,
                                   time_grid=on_training_grid(grid, 16))
  alpha_0, sigma_0 = process.alpha_sigma(0.0)
  x = f(None, z, grid(16, 16)).x
  for j, i in enumerate((12, 8, 4), start=1):
    alpha, sigma = process.alpha_sigma(grid(i, 16))
    xi = jax.random.normal(jax.random.fold_in(rng, j - 1), z.shape)
    x_sigma = x / alpha_0 + jnp.sqrt((sigma / alpha) ** 2 - (sigma_0 / alpha_0) ** 2) * xi
    x = f(None, alpha * x_sigma, grid(i, 16)).x
  np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid_name", ["karras", "quadratic"])
@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_exact_consistency_function_samples_the_data(grid_name, num_steps):
  """Through the sampler on the N = 16 training grid, the exact f gives the data's mean and
  variance within 5 Monte Carlo standard errors (20k samples)."""
  process, n = CosineVP(), 20_000
  f = exact_consistency_function(process)
  grid = on_training_grid(consistency.training_grid(grid_name, process), 16)
  z = jax.random.normal(jax.random.key(2), (n, 2))
  x = get_sampler("consistency")(f, None, z, process=process, num_steps=num_steps,
                                 rng=jax.random.key(3), time_grid=grid)
  mean, var = np.asarray(jnp.mean(x, 0)), np.asarray(jnp.var(x, 0))
  np.testing.assert_array_less(np.abs(mean - MEAN), 5 * np.sqrt(VAR / n))
  np.testing.assert_array_less(np.abs(var - VAR), 5 * VAR * np.sqrt(2 / n))


@pytest.mark.parametrize("preset", sorted(consistency_configs.PRESETS))
def test_every_eval_step_count_is_on_the_training_grid(preset):
  config = consistency_configs.get_config(preset)
  method = get_method(config)
  n = method.stages()[-1].args["grid"]
  for k in str(config.eval.num_steps).split(","):
    assert n % int(k) == 0 or int(k) == len(consistency.sample_ts(config.consistency)), (n, k)
  config.eval.num_steps = "1,2,3" if n % 3 else "1,2,5"
  with pytest.raises(ValueError, match="leave the N = .* training grid"):
    get_method(config)


def moment_error(x):
  """sqrt(|mean - mu|^2 + |var - s^2|^2) of samples x against the data's."""
  return float(np.hypot(np.linalg.norm(np.mean(x, 0) - MEAN), np.linalg.norm(np.var(x, 0) - VAR)))


@pytest.mark.parametrize("grid_name", ["karras"])
def test_after_a_short_fit_more_steps_are_no_worse(grid_name):
  """The presets' recipe (Karras grid, N = 16, EMA target mu = 0.95), 2000 updates on the
  Gaussian: the 2- and 4-step moment errors are at most the 1-step error (+ 0.004, ~2.5
  Monte Carlo standard errors at 100k samples; measured 0.0129 / 0.0131 / 0.0115). On the
  former quadratic grid they grew (measured 0.057 / 0.079 / 0.090)."""
  process = CosineVP()
  grid = consistency.training_grid(grid_name, process)
  student, _, params = train_on_gaussian(process, 16, 2000, time_grid=grid, mu=0.95)
  z = jax.random.normal(jax.random.key(9), (100_000, 2))
  errors = [moment_error(np.asarray(get_sampler("consistency")(
      student, params, z, process=process, num_steps=k, rng=jax.random.key(10),
      time_grid=on_training_grid(grid, 16)))) for k in (1, 2, 4)]
  assert max(errors[1:]) <= errors[0] + 0.004, errors


def test_ict_weights_are_inverse_sigma_gaps_with_mean_one():
  """weighting='ict': lambda_i = 1 / (sigma_i - sigma_{i-1}) over its mean on the N intervals,
  sigma_i the paper's Karras formula (i >= 1) and sigma_0 = exp(-lambda_max / 2) = exp(-10)
  of the cosine process (t = 0); the per-example loss is lambda_i times the uniform one."""
  process, n = CosineVP(), 16
  sigma = [np.exp(-10.0)] + [(0.002 ** (1 / 7) + (i - 1) / (n - 1) * (80 ** (1 / 7) -
                              0.002 ** (1 / 7))) ** 7 for i in range(1, n + 1)]
  inverse_gap = 1.0 / np.diff(np.asarray(sigma, np.float64))
  by_hand = inverse_gap / inverse_gap.mean()
  grid = karras(process)
  i = jnp.arange(1, n + 1)
  got = consistency.interval_weights(grid, process, i, n, 24, "ict")
  np.testing.assert_allclose(np.asarray(got), by_hand, rtol=5e-3)
  assert by_hand[0] / by_hand[-1] > 1e4   # the data end's interval dominates
  np.testing.assert_array_equal(consistency.interval_weights(grid, process, i, n, 24, "uniform"),
                                np.ones(n))
  network, denoise = mlp_denoiser(process)
  params = init_params(network, jax.random.key(0), (2,))
  student = consistency.consistency_function(denoise, process, 0.5)
  teacher = analytic_denoiser(gaussian(MEAN, VAR), process)
  x, _ = gaussian(MEAN, VAR).sample(jax.random.key(1), 64)
  loss = lambda w: consistency.consistency_loss(student, params, params, teacher, None, x, None,
                                                jax.random.key(2), n, process, time_grid=grid,
                                                weighting=w, max_intervals=24)
  index = jax.random.randint(jax.random.split(jax.random.key(2), 3)[0], (64,), 1, n + 1)
  np.testing.assert_allclose(np.asarray(loss("ict")),
                             by_hand[np.asarray(index) - 1] * np.asarray(loss("uniform")),
                             rtol=5e-3)
