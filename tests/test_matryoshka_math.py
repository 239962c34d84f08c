"""Matryoshka's math against independent paths: the loss from the network's raw outputs with
pooling, schedules and noising written out by hand; the network's time input at every level;
nested DDIM on a two-resolution Gaussian with its exact nested denoiser; the in-adapter's place."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.embeddings import ConditionEmbedding
from diffusion.nested_unet import NestedUNet
from diffusion.parameterization import Prediction
from distillation.matryoshka import shifted_processes
from sampling import get_sampler
from tests.distill_fixtures import randomize
from tests.test_matryoshka import digits_batch, grown_method, grown_network, tiny_config
from training.method import get_method

TIME = jnp.array([0.3, -4.0, 11.0])
LABEL = jnp.array([0, 2, 3])


def cosine_logsnr(t, shift=0.0):
  """The cosine schedule by hand, logSNR range [-20, 20]: -2 log tan(a t + b) - shift."""
  b = np.arctan(np.exp(-10.0))
  a = np.arctan(np.exp(10.0)) - b
  return -2.0 * np.log(np.tan(a * np.asarray(t, np.float64) + b)) - shift


def alpha_sigma(logsnr):
  """alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""
  return np.sqrt(1.0 / (1.0 + np.exp(-logsnr))), np.sqrt(1.0 / (1.0 + np.exp(logsnr)))


def pool_by_hand(x, factor):
  """Average of each factor x factor block, by loops."""
  b, h, w, c = x.shape
  out = np.zeros((b, h // factor, w // factor, c))
  for i in range(h // factor):
    for j in range(w // factor):
      out[:, i, j] = x[:, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor].mean((1, 2))
  return out


class Spy:
  """Records the NestedUNet's (z, time, output) and every level's time embedding input."""

  def __init__(self):
    self.calls, self.times = [], []

  def __call__(self, next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      if isinstance(context.module, NestedUNet):     # the tests nest one UNet: one call
        self.calls.append((args[0], args[1], out))
      if isinstance(context.module, ConditionEmbedding):
        self.times.append(np.asarray(args[0]))
    return out


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_shifted_logsnr_is_the_cosine_by_hand_minus_p_log_ratio(power):
  t = np.linspace(0.0, 1.0, 101)
  for resolution, process in zip((4, 8, 16), shifted_processes((4, 8, 16), power)):
    np.testing.assert_allclose(process.logsnr(t), cosine_logsnr(t, power * np.log(resolution / 4)),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weighting", ["snr", "snr+1"])
def test_loss_from_raw_network_outputs(weighting):
  """The weighted sum over resolutions (weights 3 : 0.5, highest first) of the per-pixel
  eps-MSE (snr) or v-MSE (snr+1) of the v-predicting network's raw outputs o_r, with x_lo the
  2x2 block means, z_r = alpha_r x_r + sigma_r eps_r, lambda_hi = lambda - log 2 (p = 1)."""
  config = tiny_config(loss_weights=(3.0, 0.5))
  config.diffusion.weighting = weighting
  method = get_method(config)
  _, params, _, _ = grown_method()
  params = randomize(params, jax.random.key(3), 0.1)
  batch = digits_batch()
  spy = Spy()
  with nn.intercept_methods(spy):
    loss, metrics = method.loss(params, {}, batch, jax.random.key(7), {})
  (z, time, outputs), = spy.calls
  lam = np.asarray(time, np.float64)
  x = np.asarray(batch["image"], np.float64)
  expected = 0.0
  for x_r, z_r, o_r, shift, weight in zip((pool_by_hand(x, 2), x), z, outputs,
                                          (0.0, np.log(2.0)), (0.5, 3.0)):
    alpha, sigma = (a.reshape(-1, 1, 1, 1) for a in alpha_sigma(lam - shift))
    z_r, o_r = np.asarray(z_r, np.float64), np.asarray(o_r, np.float64)
    eps = (z_r - alpha * x_r) / sigma
    assert abs(eps.std() - 1.0) < 0.15          # z_r = alpha_r x_r + sigma_r N(0, I)
    if weighting == "snr":
      error = eps - (sigma * z_r + alpha * o_r)        # eps_hat of v = o
    else:
      error = (alpha * eps - sigma * x_r) - o_r        # v - v_hat
    expected += weight * np.mean(error ** 2)
  np.testing.assert_allclose(loss, expected, rtol=2e-4)
  assert float(metrics["loss_4px"]) > 0 and float(metrics["loss_8px"]) > 0


def test_every_level_gets_the_unshifted_logsnr_as_its_time():
  """ml-mdm feeds every level the same unshifted step index; here the network time is the
  unshifted cosine logSNR lambda(t), at both levels, whatever the shift."""
  method, params, _, _ = grown_method()
  t = jnp.array([0.05, 0.3, 0.5, 0.9])
  z = (jnp.zeros((4, 4, 4, 1)), jnp.zeros((4, 8, 8, 1)))
  spy = Spy()
  with nn.intercept_methods(spy):
    method.denoise(params, z, t, {"label": jnp.arange(4)})
  assert len(spy.times) == 2                       # the outer shell's and the inner UNet's
  for time in spy.times:
    np.testing.assert_allclose(time, cosine_logsnr(t), rtol=1e-4, atol=1e-5)


# ---- nested DDIM on a two-resolution Gaussian ------------------------------------------------

MEAN = np.array([0.3, -0.2, 0.1, 0.4])                    # a 2x2 image, row-major
ROOT = np.array([[0.5, 0.0, 0.0, 0.0], [0.3, 0.4, 0.0, 0.0], [-0.2, 0.1, 0.35, 0.0],
                 [0.1, 0.25, -0.1, 0.3]])
COV = ROOT @ ROOT.T
POOL = np.full((1, 4), 0.25)                              # x_lo = the mean of the 4 pixels


def exact_nested_denoiser(power):
  """E[x_hi | z_lo, z_hi] of x_hi ~ N(MEAN, COV), z_lo = a_lo POOL x_hi + s_lo e_lo,
  z_hi = a_hi x_hi + s_hi e_hi (schedules by hand): posterior precision
  COV^-1 + A^T D^-1 A, A = [a_lo POOL; a_hi I], D = diag(s_lo^2, s_hi^2 I);
  x_lo_hat = POOL x_hat."""
  precision = np.linalg.inv(COV)

  def denoise(params, z, t, cond=None, *, rng=None):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), z[0].shape[:1])
    lam = -2.0 * jnp.log(jnp.tan((jnp.arctan(jnp.exp(10.0)) - jnp.arctan(jnp.exp(-10.0))) * t
                                 + jnp.arctan(jnp.exp(-10.0))))
    (a_lo, s_lo), (a_hi, s_hi) = [
        (jnp.sqrt(jax.nn.sigmoid(l)), jnp.sqrt(jax.nn.sigmoid(-l)))
        for l in (lam, lam - power * np.log(2.0))]
    z_lo, z_hi = z[0].reshape(-1, 1), z[1].reshape(-1, 4)
    post = (precision + (a_lo ** 2 / s_lo ** 2)[:, None, None] * (POOL.T @ POOL)
            + (a_hi ** 2 / s_hi ** 2)[:, None, None] * np.eye(4))
    rhs = (precision @ MEAN + (a_lo / s_lo ** 2)[:, None] * z_lo * POOL
           + (a_hi / s_hi ** 2)[:, None] * z_hi)
    x_hi = jnp.linalg.solve(post, rhs[..., None])[..., 0]
    x = (x_hi @ POOL.T).reshape(z[0].shape), x_hi.reshape(z[1].shape)
    eps = tuple((z_r - a[:, None, None, None] * x_r) / s[:, None, None, None]
                for z_r, x_r, a, s in zip(z, x, (a_lo, a_hi), (s_lo, s_hi)))
    return Prediction(x=x, eps=eps)

  return denoise


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_nested_ddim_reproduces_the_joint_gaussian(power):
  """x_hi ~ N(MEAN, COV) on 2x2, x_lo its mean: 128 nested DDIM steps over the project's
  shifted processes with the exact nested denoiser give (x_lo, x_hi) with the joint mean
  (POOL MEAN, MEAN) and covariance [[POOL COV POOL^T, POOL COV], [COV POOL^T, COV]]."""
  n = 16384
  z = (jax.random.normal(jax.random.key(0), (n, 1, 1, 1)),
       jax.random.normal(jax.random.key(1), (n, 2, 2, 1)))
  x_lo, x_hi = get_sampler("ddim")(exact_nested_denoiser(power), {}, z, None,
                                   process=shifted_processes((1, 2), power), num_steps=128)
  samples = np.concatenate([np.asarray(x_lo).reshape(n, 1), np.asarray(x_hi).reshape(n, 4)], 1)
  joint_mean = np.concatenate([POOL @ MEAN, MEAN])
  joint_cov = np.block([[POOL @ COV @ POOL.T, POOL @ COV], [COV @ POOL.T, COV]])
  std = np.sqrt(np.diag(joint_cov))
  np.testing.assert_array_less(np.abs(samples.mean(0) - joint_mean), 4 * std / np.sqrt(n))
  # Covariance entries: standard error <= sqrt(2 / n) var, about 0.003 here.
  np.testing.assert_allclose(np.cov(samples.T), joint_cov, rtol=0, atol=0.012)


# ---- the in-adapter ----------------------------------------------------------------------------

def test_in_adapter_feeds_the_outer_bottom_features_into_the_inner_input():
  """The inner UNet's outputs are those of the UNet alone given `features` = the in-adapter's
  output (added to its input convolution), and the in-adapter's output is 4x4 (the outer's
  bottom) and follows z_hi: with it non-zero, z_hi changes the low-resolution output; zeroed,
  it cannot (the out-adapter only reaches the high resolution)."""
  nested, inner, params = grown_network()
  params = randomize(params, jax.random.key(4))
  z_lo = jax.random.normal(jax.random.key(3), (3, 4, 4, 1))
  z_hi = jax.random.normal(jax.random.key(5), (3, 8, 8, 1))
  outs, state = nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL,
                             capture_intermediates=True)
  features, = state["intermediates"]["in_adapter"]["__call__"]
  assert features.shape == (3, 4, 4, inner.ch) and float(jnp.abs(features).max()) > 0.01
  alone = inner.apply({"params": params["inner"]}, z_lo, TIME, label=LABEL, features=features)
  np.testing.assert_allclose(outs[0], alone, rtol=1e-5, atol=1e-6)

  def low_output(params, z_hi):
    return jnp.sum(nested.apply({"params": params}, (z_lo, z_hi), TIME, label=LABEL)[0] ** 2)

  assert float(jnp.abs(jax.grad(low_output, 1)(params, z_hi)).max()) > 1e-4
  cut = dict(params, in_adapter=jax.tree.map(jnp.zeros_like, params["in_adapter"]))
  np.testing.assert_array_equal(jax.grad(low_output, 1)(cut, z_hi), jnp.zeros_like(z_hi))
