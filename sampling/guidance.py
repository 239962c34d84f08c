"""Classifier-free guidance as a Denoiser transform (convention of Meng et al.; w = 0 is
the plain conditional model): x_hat_w = (1 + w) x_hat_cond - w x_hat_uncond, eps likewise.
"""
import jax
import jax.numpy as jnp

from diffusion.denoiser import Denoiser
from diffusion.parameterization import Prediction
from diffusion.processes import broadcast_to


def _twice(a):
  return jnp.concatenate([a, a])


def is_static_zero(w) -> bool:
  """Whether w is a Python number equal to 0 (known at trace time; a traced w never is)."""
  return isinstance(w, (int, float)) and w == 0


def guided(denoise: Denoiser, w, num_classes: int) -> Denoiser:
  """The guided Denoiser of a class-conditional `denoise` with null class `num_classes`.

  w is a scalar or per-example (B,) (it may be a traced value). Both branches run in ONE
  network call on the doubled batch [z; z] with labels [label; null]; any other `cond`
  entries and a per-example t are doubled alongside. A static w == 0 (a Python number,
  `is_static_zero`) returns `denoise` itself: the conditional branch alone, one network call
  on the plain batch. A traced w that happens to be 0 still runs both branches (the result
  equals the conditional model's to rounding); callers that know w statically pass a float.
  """
  if is_static_zero(w):
    return denoise

  def denoise_w(params, z, t, cond) -> Prediction:
    batch = jax.tree.leaves(z)[0].shape[0]   # z may be a pytree (nested z): every leaf alike
    both = {k: _twice(v) for k, v in cond.items()}
    both["label"] = jnp.concatenate([cond["label"], jnp.full_like(cond["label"], num_classes)])
    t = jnp.asarray(t)
    pred = denoise(params, jax.tree.map(_twice, z), t if t.ndim == 0 else _twice(t), both)

    def mix(a):
      scale = broadcast_to(jnp.asarray(w, a.dtype), a)
      return (1.0 + scale) * a[:batch] - scale * a[batch:]

    return jax.tree.map(mix, pred)

  return denoise_w
