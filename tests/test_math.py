"""Exact identities of the math core, and the analytic teacher against Monte Carlo."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import GaussianMixture, analytic_denoiser, gaussian_flow_map
from diffusion.losses import weighted_x_mse
from diffusion.networks import init_params
from diffusion.parameterization import PARAMETERIZATIONS, v_target
from diffusion.processes import CosineVP, LinearFlow, shifted_cosine

T = jnp.array([0.05, 0.3, 0.5, 0.8, 0.95])


@pytest.mark.parametrize("process", [CosineVP(), LinearFlow()], ids=["cosine", "flow"])
def test_process_scales(process):
  alpha, sigma = process.alpha_sigma(T)
  np.testing.assert_allclose(process.logsnr(T), jnp.log(alpha**2 / sigma**2), rtol=1e-4, atol=1e-4)
  if not process.is_flow:
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
    assert jnp.all(jnp.diff(process.logsnr(T)) < 0)
    np.testing.assert_allclose(process.logsnr(jnp.array([0.0, 1.0])), [20.0, -20.0], atol=5e-3)


def test_shifted_schedule():
  base, shifted = CosineVP(), shifted_cosine(64, 16, power=2.0)
  np.testing.assert_allclose(base.logsnr(T) - shifted.logsnr(T), 2 * np.log(4.0), rtol=1e-5)


@pytest.mark.parametrize("name,process", [("eps", CosineVP()), ("x", CosineVP()),
                                          ("v", CosineVP()), ("eps", LinearFlow()),
                                          ("x", LinearFlow()), ("velocity", LinearFlow())])
def test_parameterization_round_trip(name, process):
  """The true output for each parameterization gives back x and eps exactly."""
  kx, ke = jax.random.split(jax.random.PRNGKey(0))
  x, eps = jax.random.normal(kx, (5, 3)), jax.random.normal(ke, (5, 3))
  z = process.noise(x, T, eps)
  outputs = {"eps": eps, "x": x, "velocity": eps - x}
  if not process.is_flow:
    outputs["v"] = v_target(x, eps, T, process)
  pred = PARAMETERIZATIONS[name](outputs[name], z, T, process)
  np.testing.assert_allclose(pred.x, x, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(pred.eps, eps, rtol=2e-4, atol=2e-4)


REFUSED = {("flow", "eps"): "divides by alpha = 1 - t, which is 0 at t = 1",
           ("flow", "x"): "divides by sigma = t, which is 0 at t = 0",
           ("flow", "v"): "only when alpha\\^2 \\+ sigma\\^2 = 1",
           ("cosine", "velocity"): "u = eps - x = dz/dt on the linear flow only"}


@pytest.mark.parametrize("process_name", ["cosine", "flow"])
@pytest.mark.parametrize("parameterization", ["eps", "x", "v", "velocity"])
def test_unworkable_process_parameterization_pairs_are_refused(process_name, parameterization):
  """build_denoiser refuses each pair that gives NaN or a wrong inverse, naming the reason and
  the parameterizations that work; the other pairs build and give finite predictions at both
  ends t = 0 and t = 1."""
  from diffusion.networks import build_denoiser
  from tests.tiny_config import tiny_teacher_config
  config = tiny_teacher_config(**{"diffusion.process": process_name,
                                  "diffusion.parameterization": parameterization})
  reason = REFUSED.get((process_name, parameterization))
  if reason:
    usable = "['velocity']" if process_name == "flow" else "['eps', 'v', 'x']"
    with pytest.raises(ValueError, match=f"parameterization='{parameterization}' cannot be used "
                       f"with the .*{reason}.*one of {re.escape(usable)} on this one"):
      build_denoiser(config)
    return
  network, process, denoise = build_denoiser(config)
  params = jax.tree.map(lambda a: a + 0.1, init_params(network, jax.random.key(0), (8, 8, 1)))
  z = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  for t in (0.0, 1.0):
    pred = denoise(params, z, t)
    assert np.isfinite(pred.x).all() and np.isfinite(pred.eps).all(), (t, pred)


def test_loss_weightings_are_the_familiar_losses():
  """snr weighting of the x-MSE is the eps-MSE; snr+1 is the v-MSE."""
  process = CosineVP()
  kx, ke, kh = jax.random.split(jax.random.PRNGKey(1), 3)
  x, eps, x_hat = (jax.random.normal(k, (5, 4)) for k in (kx, ke, kh))
  z = process.noise(x, T, eps)
  alpha, sigma = process.alpha_sigma(T[:, None])
  eps_hat = (z - alpha * x_hat) / sigma
  lam = process.logsnr(T)
  np.testing.assert_allclose(weighted_x_mse(x, x_hat, lam, "snr"),
                             jnp.mean((eps - eps_hat)**2, 1), rtol=1e-3)
  v, v_hat = alpha * eps - sigma * x, alpha * eps_hat - sigma * x_hat
  np.testing.assert_allclose(weighted_x_mse(x, x_hat, lam, "snr+1"),
                             jnp.mean((v - v_hat)**2, 1), rtol=1e-3)
  np.testing.assert_allclose(weighted_x_mse(x, x_hat, lam, "truncated_snr"),
                             jnp.maximum(jnp.exp(lam), 1) * jnp.mean((x - x_hat)**2, 1), rtol=1e-6)


MIXTURE = GaussianMixture(weights=np.array([0.3, 0.5, 0.2], np.float32),
                          means=np.array([[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]], np.float32),
                          variances=np.array([[0.2, 0.3], [0.4, 0.1], [0.3, 0.3]], np.float32),
                          labels=np.array([0, 1, 1]))


@pytest.mark.parametrize("label", [None, 0, 1, 2])
def test_analytic_denoiser_matches_monte_carlo(label):
  """E[x | z_t] by importance weighting of prior samples equals the closed form."""
  process, t = CosineVP(), 0.55
  num_classes = MIXTURE.num_classes
  chosen = None if label is None or label == num_classes else label
  x, _ = MIXTURE.sample(jax.random.PRNGKey(2), 400_000, label=chosen)
  alpha, sigma = process.alpha_sigma(jnp.float32(t))
  z0 = jnp.array([[0.3, -0.4], [-1.0, 0.8]])
  log_lik = -0.5 * jnp.sum((z0[:, None] - alpha * x[None])**2, -1) / sigma**2
  weights = jax.nn.softmax(log_lik, axis=1)
  monte_carlo = weights @ x
  effective = 1.0 / jnp.sum(weights**2, axis=1)
  assert jnp.all(effective > 1000)
  cond = None if label is None else {"label": jnp.full((2,), label)}
  exact = analytic_denoiser(MIXTURE, process)(None, z0, t, cond).x
  np.testing.assert_allclose(exact, monte_carlo, atol=4.0 / np.sqrt(float(effective.min())))


def test_gaussian_flow_map_is_the_analytic_ode():
  """d z/dt along the exact map equals the probability-flow velocity of the exact denoiser."""
  mean, var = jnp.array([0.5, -1.0]), jnp.array([0.3, 2.0])
  process = CosineVP()
  denoise = analytic_denoiser(GaussianMixture(np.ones(1, np.float32), np.asarray(mean)[None],
                                              np.asarray(var)[None]), process)
  z_t, t = jnp.array([[0.2, 0.7]]), 0.6
  path = lambda s: gaussian_flow_map(mean, var, process, z_t, t, s)
  _, dz = jax.jvp(path, (jnp.float32(t),), (jnp.float32(1.0),))
  pred = denoise(None, z_t, t)
  (alpha, sigma), (d_alpha, d_sigma) = jax.jvp(process.alpha_sigma, (jnp.float32(t),),
                                               (jnp.float32(1.0),))
  np.testing.assert_allclose(dz, d_alpha * pred.x + d_sigma * pred.eps, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(path(t), z_t, rtol=1e-6)


def test_network_settings_must_fit_the_network():
  from diffusion.networks import build_network
  with pytest.raises(ValueError, match=r"model keys \['ch'\] are not settings of the 'mlp'"):
    build_network({"name": "mlp", "ch": 16, "hidden": 8})
  with pytest.raises(ValueError, match="Unknown network 'vit'"):
    build_network({"name": "vit"})
