"""Drawing a run's samples as its config says: the noise every method starts from, the labels,
classifier-free guidance and clipping around `config.sample`'s sampler (the default
`Method.sample`, and the reference every distillation's fidelity compares against)."""
import jax
import jax.numpy as jnp

from infra.mesh import constrain_batch
from sampling import decoders, get_sampler, guided
from sampling.clipping import clipped
from sampling.guidance import is_static_zero
from sampling.noise import normal_like


def sample_labels(sample_config, num_samples: int, num_classes: int):
  """Labels to sample: `sample.labels` ('3' or '1,2,5', cycled) or 0..num_classes-1 cycled."""
  if sample_config.labels:
    chosen = [int(v) for v in str(sample_config.labels).split(",")]
    bad = [v for v in chosen if not 0 <= v < num_classes]
    if bad:
      raise ValueError(f"sample.labels {bad} outside the model's classes 0..{num_classes - 1}.")
  else:
    chosen = list(range(num_classes))
  return jnp.asarray([chosen[i % len(chosen)] for i in range(num_samples)], jnp.int32)


def sample_cond(config, num_samples: int, guidance_weight):
  """The cond `sample_images` passes: None for unconditional models, else {'label':
  `sample_labels`} plus, for w-conditioned networks, 'w' = guidance_weight."""
  if not config.model.num_classes:
    return None
  cond = {"label": sample_labels(config.sample, num_samples, config.model.num_classes)}
  if config.model.guidance:
    cond["w"] = jnp.full((num_samples,), guidance_weight, jnp.float32)
  return cond


def initial_noise(config, rng, num_samples: int, shapes=None):
  """(z_1 ~ N(0, I) of shape (num_samples,) + data.shape, the sampler's rng), split from rng
  the same way for every method, so students and teachers sample from the same noise.

  `shapes`: per-example shapes of a nested z, a tuple lowest resolution first (default: one
  array of data.shape); its last (highest-resolution) leaf is exactly the plain z_1 above and
  the others independent noise (sampling.noise.normal_like).
  """
  noise_rng, sampler_rng = jax.random.split(rng)
  nested = shapes is not None
  shapes = tuple(map(tuple, shapes)) if nested else (tuple(config.data.shape),)
  z = normal_like(noise_rng, tuple(jax.ShapeDtypeStruct((num_samples,) + s, jnp.float32)
                                   for s in shapes))
  z = tuple(map(constrain_batch, z))   # split over the devices under jax.set_mesh
  return (z if nested else z[0]), sampler_rng


def sample_images(config, denoise, process, params, rng, num_samples: int, num_steps,
                  guidance_weight=None, shapes=None, time_grid=None):
  """Images from `config.sample.sampler` with `num_steps` steps, starting at z_1 ~ N(0, I)
  (a nested z of `shapes` with a pytree of processes gives one output per resolution).

  Class-conditional models get `sample_cond` and, when guidance_weight (default
  `sample.guidance_weight`) is non-zero, classifier-free guidance; with `sample.clip_x`
  every step's x_hat (after guidance) is clipped to [-1, 1] (sampling.clipping).
  time_grid: a grid name or function in place of `sample.time_grid`.
  """
  sc = config.sample
  if get_sampler(sc.sampler).maps_data_to_noise:
    raise ValueError(f"sample.sampler={sc.sampler!r} maps data to noise; it cannot draw samples "
                     f"from noise: choose one of {decoders()}.")
  w = sc.guidance_weight if guidance_weight is None else guidance_weight
  num_classes = config.model.num_classes
  if not num_classes and not is_static_zero(w):
    raise ValueError(f"sample.guidance_weight={w} needs a class-conditional model "
                     "(model.num_classes > 0).")
  if num_classes and not config.model.guidance:
    denoise = guided(denoise, w, num_classes)
  if sc.get("clip_x", False):   # configs saved before sample.clip_x existed sampled unclipped
    denoise = clipped(denoise, process)
  z, sampler_rng = initial_noise(config, rng, num_samples, shapes)
  return get_sampler(sc.sampler)(denoise, params, z, sample_cond(config, num_samples, w),
                                 process=process, num_steps=num_steps, rng=sampler_rng,
                                 time_grid=time_grid or sc.time_grid)


def ddim_samples(config, denoise, process, params, rng, num_samples: int, num_steps):
  """`sample_images` with deterministic DDIM in place of `config.sample.sampler`."""
  view = config.copy_and_resolve_references()
  view.sample.sampler = "ddim"
  return sample_images(view, denoise, process, params, rng, num_samples, num_steps)
