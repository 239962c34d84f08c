"""Flow matching on the linear-flow process (rectified flow; DESIGN.md 2 and 5.6): a velocity
model trained from data, the model Catch-Up Distillation trains and its plain baseline.

z_t = (1 - t) x + t eps, t = e0 + (1 - e0) U with U ~ U(0, 1) (e0 = 1e-5 keeps t off the data
end, as the reference's `RectifiedFlow.get_train_tuple`), velocity u = dz/dt = eps - x;
loss = MSE(u_hat(z_t, t), eps - x), the mean over every element (PyTorch's MSELoss).

The network's output IS the velocity (the `velocity` parameterization: x_hat = z - t o,
eps_hat = z + (1 - t) o); a network with several output heads (diffusion.heads) gives the
velocity of every head from one forward (`velocity_heads`). Sampling goes through the
Denoiser of one head (`head_denoiser`) with any sampler of the project: on this process a
DDIM step is exactly an Euler step of dz/dt = u.
"""
import jax
import jax.numpy as jnp

from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.heads import head_outputs, select_head
from diffusion.networks import build_network, build_process
from distillation.common import require_sections, training_cond
from distillation.teacher import FromData
from training.method import register

USAGE = "--config=configs/catch_up.py:<preset>"


def require_velocity_flow(config):
  """A clear error unless the run is a velocity model on the linear-flow process."""
  d = config.diffusion
  if d.process != "flow" or d.parameterization != "velocity":
    raise ValueError(f"Method {config.method!r} trains a velocity model on the linear flow: set "
                     f"diffusion.process='flow' and diffusion.parameterization='velocity' "
                     f"(got {d.process!r}, {d.parameterization!r}); use {USAGE}.")


def flow_times(rng, n: int, e0: float):
  """t = e0 + (1 - e0) U, U ~ U(0, 1), shape (n,)."""
  return e0 + (1.0 - e0) * jax.random.uniform(rng, (n,))


def mse(a, b):
  """Mean of (a - b)^2 over every element (batch and pixels)."""
  return jnp.mean(jnp.square(a - b))


def velocity_heads(network, process):
  """u(params, z, t, cond=None, rng=None) -> tuple of every head's velocity (B, ...), from one
  forward of `network` (t of shape (B,); `rng` turns dropout on)."""
  apply_fn = model_apply_fn(network)

  def u(params, z, t, cond=None, rng=None):
    cond = cond or {}
    o = apply_fn(params, z, process.network_time(t), cond.get("label"), cond.get("w"), rng)
    return head_outputs(o)

  return u


def head_denoiser(network, process, head: int = 1):
  """The Denoiser of output head `head` (1 = the main output) of a velocity network."""
  return make_denoiser(select_head(model_apply_fn(network), head), process, "velocity")


class VelocityModel(FromData):
  """Shared set-up of the methods that train a velocity network with `num_heads()` output
  heads on the linear flow from data; `self.denoise` is head `sample_head()`'s Denoiser, which
  the default `Method.sample` draws with (`sample.sampler`, training.samples.sample_images)."""

  def __init__(self, config):
    super().__init__(config)
    require_sections(config, ("cud",), USAGE)
    require_velocity_flow(config)
    self.network = build_network(dict(config.model, output_heads=self.num_heads()))
    self.process = build_process(config.diffusion)
    self.velocities = velocity_heads(self.network, self.process)
    self.denoise = head_denoiser(self.network, self.process, self.sample_head())

  def num_heads(self) -> int:
    return 1

  def sample_head(self) -> int:
    return 1

  def noised(self, batch, rng):
    """(x, eps, t, z_t, cond) of a training batch."""
    x = batch["image"]
    t_rng, eps_rng, cond_rng = jax.random.split(rng, 3)
    t = flow_times(t_rng, x.shape[0], self.config.cud.e0)
    eps = jax.random.normal(eps_rng, x.shape)
    return x, eps, t, self.process.noise(x, t, eps), training_cond(self.config, batch, cond_rng)


@register("flow_matching")
class FlowMatching(VelocityModel):
  """Plain flow matching: loss = MSE(u(z_t, t), eps - x) (the catch-up presets' baseline)."""

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    data_rng, drop_rng = jax.random.split(rng)
    x, eps, t, z, cond = self.noised(batch, data_rng)
    loss = mse(self.velocities(params, z, t, cond, drop_rng)[0], eps - x)
    return loss, {"loss": loss}
