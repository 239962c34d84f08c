r"""Parity of the imported UNet2DModel (diffusion/diffusers_unet.py) with diffusers itself.

  python -m bench.import_parity

For each of three UNet2DModel configs (CONFIGS) with random weights: diffusers' torch output
and this project's JAX output (the state dict mapped by diffusion/diffusers_weights.py) on the
same inputs, at timesteps 0, 1, 37.5 (fractional), 500 and 999; prints the largest absolute
difference and the output scale. Needs torch and diffusers (test dependencies).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.diffusers_unet import DiffusersUNet, model_settings
from diffusion.diffusers_weights import params_from_state_dict
from diffusion.networks import init_params

# google/ddpm-cifar10-32's layout at a quarter of its width and half its size; a
# class-conditional one; one with resnet_time_scale_shift='scale_shift' (whose mid-block
# attention then has no GroupNorm) and dropout.
CONFIGS = {
    "ddpm_cifar10_shaped": dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=2, attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0),
    "class_conditional": dict(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"), layers_per_block=1,
        attention_head_dim=8, norm_num_groups=8, num_class_embeds=10),
    "scale_shift": dict(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        attention_head_dim=8, norm_num_groups=4, resnet_time_scale_shift="scale_shift",
        dropout=0.1, mid_block_scale_factor=2 ** 0.5, center_input_sample=True),
}
TIMESTEPS = (0.0, 1.0, 37.5, 500.0, 999.0)


def random_diffusers_unet(config: dict, seed: int = 0):
  """A diffusers UNet2DModel of `config` in eval mode, every parameter moved by N(0, 0.05^2)
  from its init (so norms, biases and zero-initialised layers all act)."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  model = UNet2DModel(**config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def state_dict_arrays(model) -> dict:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def parity(name: str, batch: int = len(TIMESTEPS)) -> tuple[float, float]:
  """(max |jax - torch|, max |torch|) of config `name` on random inputs at TIMESTEPS."""
  import torch  # pylint: disable=import-outside-toplevel
  config = CONFIGS[name]
  model = random_diffusers_unet(config)
  net = DiffusersUNet(**model_settings(dict(model.config)))
  shape = (config["sample_size"],) * 2 + (config["in_channels"],)
  like = jax.eval_shape(lambda: init_params(net, jax.random.PRNGKey(0), shape))
  params = params_from_state_dict(state_dict_arrays(model), like)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((batch,) + shape).astype(np.float32)
  t = np.asarray(TIMESTEPS[:batch], np.float32)
  labels = rng.integers(0, 10, batch) if config.get("num_class_embeds") else None
  with torch.no_grad():
    want = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                 None if labels is None else torch.from_numpy(labels)).sample
  want = want.numpy().transpose(0, 2, 3, 1)
  got = np.asarray(net.apply({"params": params}, jnp.asarray(x), jnp.asarray(t),
                             None if labels is None else jnp.asarray(labels)))
  return float(np.abs(got - want).max()), float(np.abs(want).max())


def main():
  print(f"{'config':<22} {'max |jax - torch|':>18} {'max |torch|':>12} {'seconds':>8}")
  for name in CONFIGS:
    start = time.time()
    diff, scale = parity(name)
    print(f"{name:<22} {diff:>18.3g} {scale:>12.3g} {time.time() - start:>8.1f}")


if __name__ == "__main__":
  main()
