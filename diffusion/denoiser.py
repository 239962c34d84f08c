"""The Denoiser interface: denoise(params, z, t, cond) -> Prediction(x_hat, eps_hat).

`cond` is a dict that may hold `label` (int (B,), the null class = num_classes)
and `w` (float (B,), guidance weight for guided students); or None.
Samplers and distillation losses see only this function, never the network.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffusion.parameterization import (Prediction, check_supported, get_parameterization,
                                        per_leaf_prediction, signal_reading)

Denoiser = Callable[..., Prediction]


def make_denoiser(apply_fn: Callable, process, parameterization: str, *,
                  signal: bool = False) -> Denoiser:
  """Wrap a network `apply_fn(params, z, network_time, label, w, rng) -> o` as a Denoiser;
  refuses a parameterization that cannot work on `process` (check_supported).
  `signal`: the network is a BOOT student (z = the noise eps at every t), its output read by
  `signal_reading(parameterization)`: Prediction(x = the signal g(eps, t), eps = eps).

  Nested z (a network over several resolutions, e.g. the NestedUNet): `process` is a pytree
  of processes like z and o, one per resolution; each leaf gets its own process's
  parameterization and the Prediction holds pytrees like z. The network's time input is that
  of the FIRST process (the lowest resolution, whose schedule is the unshifted one), the same
  for every resolution.
  """
  processes = jax.tree.leaves(process)
  for p in processes:
    check_supported(parameterization, p)
  to_prediction = (signal_reading if signal else get_parameterization)(parameterization)

  def denoise(params, z, t, cond: Optional[dict] = None, *, rng=None) -> Prediction:
    """`rng` (optional) turns on training mode (dropout) for this call."""
    cond = cond or {}
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), jax.tree.leaves(z)[0].shape[:1])
    o = apply_fn(params, z, processes[0].network_time(t), cond.get("label"), cond.get("w"), rng)
    return per_leaf_prediction(lambda p, o, z: to_prediction(o, z, t, p), process, o, z)

  return denoise


def model_apply_fn(model) -> Callable:
  """A Linen model's apply as the `apply_fn` of `make_denoiser`; train mode iff rng is given."""

  def apply_fn(params, z, time, label, w, rng=None):
    train = rng is not None
    return model.apply({"params": params}, z, time, label=label, w=w, train=train,
                       rngs={"dropout": rng} if train else None)

  return apply_fn
