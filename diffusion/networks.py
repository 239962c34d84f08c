"""Networks, processes and Denoisers built from a run config."""
import dataclasses

import jax.numpy as jnp

from diffusion.denoiser import make_denoiser, model_apply_fn
from diffusion.diffusers_unet import DiffusersUNet
from diffusion.mlp import MLP
from diffusion.nested_unet import NestedUNet
from diffusion.processes import get_process
from diffusion.registry import Registry
from diffusion.unet import UNet

NETWORKS = Registry("network")
NETWORKS.update(unet=UNet, mlp=MLP, nested_unet=NestedUNet, diffusers_unet=DiffusersUNet)


def build_network(model_config):
  """Instantiate `model_config.name` with the other keys of the section as fields (a nested
  `inner` section is built the same way: a NestedUNet's inner network)."""
  kwargs = dict(model_config)  # a ConfigDict or a plain dict
  name = kwargs.pop("name")
  if "inner" in kwargs:
    kwargs["inner"] = build_network(kwargs["inner"])
  network = NETWORKS.lookup(name)
  fields = {f.name for f in dataclasses.fields(network)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"model keys {unknown} are not settings of the {name!r} network, which "
                     f"takes {sorted(fields)}: give the model section that network's keys.")
  return network(**kwargs)


def build_process(diffusion_config):
  """The config's noise process (`cosine` takes the logSNR range, `ddpm` the `diffusion.ddpm`
  section: beta_schedule, beta_start, beta_end, num_train_timesteps)."""
  kwargs = {}
  if diffusion_config.process == "cosine":
    kwargs = dict(logsnr_min=diffusion_config.logsnr_min, logsnr_max=diffusion_config.logsnr_max)
  elif diffusion_config.process == "ddpm":
    kwargs = dict(diffusion_config.ddpm)
  return get_process(diffusion_config.process, **kwargs)


def build_denoiser(config, **model_overrides):
  """(network, process, denoise) for a run config's `model` and `diffusion` sections."""
  model_config = dict(config.model)
  model_config.update(model_overrides)
  network = build_network(model_config)
  process = build_process(config.diffusion)
  return network, process, make_denoiser(model_apply_fn(network), process,
                                         config.diffusion.parameterization)


def init_params(network, rng, shape):
  """Parameters of `network` for inputs of per-example shape `shape` (for a NestedUNet a
  tuple of shapes, lowest resolution first)."""
  zeros = lambda s: jnp.zeros((1,) + tuple(s), jnp.float32)
  z = tuple(map(zeros, shape)) if isinstance(shape[0], (tuple, list)) else zeros(shape)
  time = jnp.zeros((1,), jnp.float32)
  return network.init(rng, z, time, label=None, w=None)["params"]
