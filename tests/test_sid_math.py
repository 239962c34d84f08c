"""SiD's math against formulas written out by hand and the reference code's (mingyuanzhou/SiD,
training/sid_loss.py): the generator loss and its gradient, the generator loss's noise levels,
the fake score's EDM loss, and the presets that take the paper's settings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import sid as sid_configs
from diffusion.parameterization import Prediction
from diffusion.processes import CosineVP
from distillation.data_free import example_keys
from distillation.sid import (FAKE_SCORE_TIMES, SiDSettings, denoising_loss, generator_time,
                              sid_generator_loss, sid_losses)

SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def cosine_logsnr(t):
  """The cosine schedule by hand (logSNR range [-20, 20])."""
  b = jnp.arctan(jnp.exp(-10.0))
  return -2.0 * jnp.log(jnp.tan((jnp.arctan(jnp.exp(10.0)) - b) * t + b))


def alpha_sigma(lam):
  return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def network(p, z, t):
  """A smooth stand-in x-predictor with its own time dependence: tanh(w z + b) (1 + lambda/40)."""
  lam = cosine_logsnr(jnp.asarray(t, jnp.float32)).reshape(-1, *([1] * (z.ndim - 1)))
  return jnp.tanh(p["w"] * z + p["b"]) * (1.0 + lam / 40.0)


@pytest.mark.parametrize("alpha", [0.0, 1.2])
def test_generator_loss_is_the_formula_by_hand(alpha):
  """(x_real - x_fake) . ((x_real - x_g) - alpha (x_real - x_fake)) / max(mean|x_g - x_real|,
  1e-5), pixel means (sid_loss.py generator_loss, summed there instead)."""
  x_g, x_real, x_fake = np.asarray(jax.random.normal(jax.random.key(0), (3, 4, 6)), np.float64)
  expected = []
  for g, r, f in zip(x_g, x_real, x_fake):
    total = sum((r[i] - f[i]) * ((r[i] - g[i]) - alpha * (r[i] - f[i])) for i in range(6))
    expected.append(total / 6 / max(sum(abs(g[i] - r[i]) for i in range(6)) / 6, 1e-5))
  np.testing.assert_allclose(sid_generator_loss(x_g, x_real, x_fake, alpha), expected,
                             rtol=1e-5)


class Recorder:
  """The denoisers of sid_losses as `network`, recording every call's (z, t) (eager only)."""

  def __init__(self):
    self.student, self.teacher = [], []

  def denoise(self, params, z, t, cond=None, *, rng=None):
    self.student.append((z, t))
    return Prediction(x=network(params, z, t), eps=None)

  def teach(self, params, z, t, cond=None):
    self.teacher.append((z, t))
    return Prediction(x=network(params, z, t), eps=None)


PARAMS = {"generator": {"w": jnp.array([0.7, -1.1, 0.4]), "b": jnp.array([0.1, 0.2, -0.3])},
          "fake_score": {"w": jnp.array([0.9, -0.8, 0.6]), "b": jnp.array([0.0, 0.3, -0.1])}}
TEACHER = {"w": jnp.array([1.2, -0.5, 0.8]), "b": jnp.array([-0.2, 0.1, 0.05])}


def code_generator_loss(generator, recorder=None, alpha=1.2):
  recorder = recorder or Recorder()
  keys = example_keys(jax.random.key(1), jnp.arange(32))
  losses = sid_losses(recorder.denoise, recorder.teach, dict(PARAMS, generator=generator),
                      TEACHER, None, keys, jax.random.key(2), CosineVP(),
                      SiDSettings(alpha=alpha), (3,))
  return jnp.mean(losses[0])


@pytest.mark.parametrize("alpha", [0.0, 1.2])
def test_generator_gradient_against_precomputed_constants(alpha):
  """d L_theta / d theta equals the gradient of the loss written with the draws and omega
  precomputed as constants: x_g = G_theta(z_0, t_init), x_t = alpha_t x_g + sigma_t eps'
  (the gradient reaches x_g through x_t into f_phi and f_psi too), omega a constant."""
  recorder = Recorder()
  value = code_generator_loss(PARAMS["generator"], recorder, alpha)
  (z_0, t_init), = recorder.student[:1]
  (x_t, t), = recorder.teacher
  x_g0 = network(PARAMS["generator"], z_0, t_init)
  a_t, s_t = (a[:, None] for a in alpha_sigma(cosine_logsnr(t)))
  noise = (x_t - a_t * x_g0) / s_t
  assert abs(float(jnp.std(noise)) - 1.0) < 0.25       # x_t = alpha_t x_g + sigma_t N(0, I)
  omega = 1.0 / np.maximum(np.mean(np.abs(x_g0 - network(TEACHER, x_t, t)), axis=1), 1e-5)

  def by_hand(generator):
    x_g = network(generator, z_0, t_init)
    x_t = a_t * x_g + s_t * noise
    x_real, x_fake = network(TEACHER, x_t, t), network(PARAMS["fake_score"], x_t, t)
    delta = x_real - x_fake
    return jnp.mean(jnp.mean(delta * ((x_real - x_g) - alpha * delta), axis=1) * omega)

  np.testing.assert_allclose(value, by_hand(PARAMS["generator"]), rtol=1e-5)
  grad = jax.grad(code_generator_loss)(PARAMS["generator"], None, alpha)
  expected = jax.grad(by_hand)(PARAMS["generator"])
  for name in ("w", "b"):
    assert float(jnp.abs(expected[name]).max()) > 1e-3
    np.testing.assert_allclose(grad[name], expected[name], rtol=1e-4, atol=1e-7)


def test_generator_time_is_the_code_edm_ladder_below_tmax():
  """sid_loss.py: u ~ U(0, tmax), sigma = (max^(1/rho) + (1 - u)(min^(1/rho) - max^(1/rho)))^rho
  with tmax = 0.8: sigma in [0.002, 24.4], its quantiles those of u."""
  process = CosineVP()
  keys = jax.random.split(jax.random.key(0), 20000)
  t = jax.vmap(lambda k: generator_time(k, process, 0.8))(keys)
  sigma = np.exp(-0.5 * np.asarray(cosine_logsnr(t), np.float64))      # sigma_t / alpha_t
  lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
  u = 1.0 - (sigma ** (1 / RHO) - hi) / (lo - hi)       # the code's formula solved for u
  q = np.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(np.quantile(u, q), 0.8 * q, rtol=0, atol=0.01)
  top = (hi + 0.2 * (lo - hi)) ** RHO
  assert top == pytest.approx(24.4, abs=0.1)
  assert sigma.min() >= SIGMA_MIN * 0.999 and top * 0.97 < sigma.max() <= top * 1.001


def test_lognormal_fake_score_time_is_the_code_edm_sigma():
  """sid_loss.py __call__: sigma = exp(p_mean + p_std n), n ~ N(0, 1), (-1.2, 1.2)."""
  settings = SiDSettings(fake_score_time="lognormal")
  keys = jax.random.split(jax.random.key(3), 20000)
  t = jax.vmap(lambda k: FAKE_SCORE_TIMES.lookup("lognormal")(k, CosineVP(), settings))(keys)
  log_sigma = -0.5 * np.asarray(cosine_logsnr(t), np.float64)
  q = np.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(np.quantile(log_sigma, q), -1.2 + 1.2 * stats.norm.ppf(q),
                             rtol=0, atol=0.06)


def test_fake_score_loss_with_lognormal_and_edm_is_the_code_edm_loss():
  """At a fixed sigma and noise n: (sigma^2 + 0.5^2) / (0.5 sigma)^2 mean (D(y + sigma n,
  sigma) - y)^2, D the same network read at the VP input z = (y + sigma n) / sqrt(1 + sigma^2)
  and the t with sigma_t / alpha_t = sigma."""
  process = CosineVP()
  y = jax.random.normal(jax.random.key(0), (5, 3))
  n = jax.random.normal(jax.random.key(1), (5, 3))
  sigma = jnp.array([0.05, 0.3, 1.0, 2.5, 9.0])
  s = process.time_of_logsnr(-2.0 * jnp.log(sigma))
  denoise = lambda params, z, t, cond=None, *, rng=None: Prediction(
      x=network(params, z, t), eps=None)
  loss = denoising_loss(denoise, TEACHER, y, s, n, process, "edm")
  edm_input = (y + sigma[:, None] * n) / jnp.sqrt(1.0 + sigma[:, None] ** 2)
  d = network(TEACHER, edm_input, s)
  weight = (sigma ** 2 + 0.25) / (0.5 * sigma) ** 2
  np.testing.assert_allclose(loss, weight * jnp.mean((d - y) ** 2, axis=1), rtol=2e-4)


@pytest.mark.parametrize("preset", ["cifar10", "imagenet64"])
def test_presets_with_the_paper_settings(preset):
  """run_sid.sh: alpha 1.2, tmax 800, init_sigma 2.5, the EDM fake-score loss, Adam (0, 0.999)
  without clipping or warm-up."""
  c = sid_configs.get_config(preset)
  assert (c.sid.alpha, c.sid.tmax, c.sid.init_sigma) == (1.2, 0.8, 2.5)
  assert (c.sid.fake_score_time, c.sid.p_mean, c.sid.p_std, c.sid.fake_score_weighting) == (
      "lognormal", -1.2, 1.2, "edm")
  assert (c.optim.b1, c.optim.b2, c.optim.grad_clip, c.optim.warmup_steps) == (
      0.0, 0.999, np.inf, 0)
