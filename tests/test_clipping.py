"""sample.clip_x: x_hat clipped to [-1, 1] at every sampler step, eps_hat consistent with it;
distillation targets unclipped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import analytic_denoiser, gaussian
from diffusion.processes import get_process
from sampling.clipping import clipped
from tests.distill_fixtures import gmm_batch, gmm_config, randomize
from tests.tiny_config import tiny_teacher_config
from training.method import get_method
from training.samples import sample_images

# Data mostly outside [-1, 1]: the exact denoiser's x_hat leaves the range.
MEAN = np.array([1.5, -2.0, 0.0], np.float32)
VAR = np.array([0.25, 0.25, 1.0], np.float32)


@pytest.mark.parametrize("process_name", ["cosine", "flow"])
def test_clipped_prediction_is_in_range_and_consistent(process_name):
  process = get_process(process_name)
  denoise = analytic_denoiser(gaussian(MEAN, VAR), process)
  z = 2.0 * jax.random.normal(jax.random.key(0), (64, 3))
  for t in (0.1, 0.5, jnp.linspace(0.05, 1.0, 64)):
    plain, clip = denoise(None, z, t), clipped(denoise, process)(None, z, t)
    np.testing.assert_array_equal(clip.x, jnp.clip(plain.x, -1.0, 1.0))
    assert float(jnp.max(jnp.abs(plain.x))) > 1.2          # there was something to clip
    alpha, sigma = process.alpha_sigma(jnp.broadcast_to(jnp.asarray(t), (64,))[:, None])
    np.testing.assert_allclose(alpha * clip.x + sigma * clip.eps, z, rtol=1e-5, atol=1e-5)
    inside = jnp.abs(plain.x) <= 1.0                        # unclipped entries keep their eps
    np.testing.assert_allclose(jnp.where(inside, clip.eps, 0.0),
                               jnp.where(inside, plain.eps, 0.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "heun", "stochastic"])
def test_samples_in_range_with_clip_x_and_not_without(sampler):
  """Every step's x_hat is clipped, so the sample (the last x_hat) is in [-1, 1]; unclipped
  samples of the same noise leave the range, and clip_x changes only what was outside."""
  process = get_process("cosine")
  denoise = analytic_denoiser(gaussian(MEAN, VAR), process)
  draw = {}
  for clip_x in (True, False):
    config = tiny_teacher_config(**{"data.shape": (3,), "sample.sampler": sampler,
                                    "sample.clip_x": clip_x})
    draw[clip_x] = jax.jit(lambda: sample_images(config, denoise, process, None,
                                                 jax.random.key(1), 512, 4))()
  assert float(jnp.max(jnp.abs(draw[True]))) <= 1.0
  assert float(jnp.mean(jnp.abs(draw[False]) > 1.0)) > 0.3
  assert float(jnp.max(jnp.abs(draw[True] - draw[False]))) > 0.3


def test_distillation_targets_stay_unclipped():
  """The progressive loss is the same with sample.clip_x on and off, on a teacher whose x_hat
  leaves [-1, 1] (randomised parameters)."""
  losses = []
  for clip_x in (True, False):
    config = gmm_config("progressive")
    config.sample.clip_x = clip_x
    method = get_method(config)
    params = randomize(method.network.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
                       ["params"], jax.random.key(1), scale=1.0)
    pred = method.denoise(params, 3.0 * jnp.ones((4, 2)), 0.5)
    assert float(jnp.max(jnp.abs(pred.x))) > 1.0
    loss, _ = method.loss(params, params, gmm_batch(jax.random.key(2), 64), jax.random.key(3),
                          {"num_steps": jnp.asarray(4)})
    losses.append(float(loss))
  assert losses[0] == losses[1]
