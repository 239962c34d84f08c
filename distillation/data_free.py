"""Conditioning for data-free distillation (BOOT, SiD): no dataset supplies labels, so the
loss draws them, and a class-conditional teacher's x-prediction is the guided one.

- Labels: c ~ U{0, ..., K-1} per example (never the null class K).
- Guidance weight: a w-conditioned student (`model.guidance`, whose w-embedding starts at
  zero, DESIGN.md 5.3) gets w ~ U[w_min, w_max] per example in its cond, and the teacher is
  guided at that w. A student without a w-embedding learns the teacher at one fixed w.
- The teacher: f_T(z, t, c) = (1 + w) x_hat(z, t, c) - w x_hat(z, t, null), eps alike
  (sampling.guided, both branches in one network call on the doubled batch); at a fixed
  w = 0 it is the conditional model alone (one call), and for an unconditional teacher it is
  the teacher's own prediction.

Usage, in a data-free method's loss (the batch is only {'index': (B,)}):

  conditioning = DataFreeConditioning.from_config(config.model, config.<method section>)
  cond = conditioning.draw(rng, batch_size)          # the student's cond (None if unconditional)
  f_T = conditioning.teacher(teacher_denoise)        # a Denoiser taking that same cond
  x_T = f_T(teacher_params, z, t, cond).x
"""
import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from diffusion.denoiser import Denoiser
from diffusion.parameterization import Prediction
from sampling import guided


def example_keys(rng, index):
  """One PRNG key per example, fold_in(rng, index_i), for the batch's global example counter
  `index` (B,). Draws made from them (`per_example`) are laid out like `index`, split over
  the devices; noise drawn at once from one replicated key would be computed whole on every
  device (XLA finds nothing to split it by), so the whole step would be too."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)


def per_example(keys, draw):
  """draw(key) for each key of `keys` (B,): B independent draws stacked, (B, ...)."""
  return jax.vmap(draw)(keys)


def uniform_labels(rng, batch_size: int, num_classes: int):
  """Labels c ~ U{0, ..., num_classes - 1}, int32 (batch_size,)."""
  return jax.random.randint(rng, (batch_size,), 0, num_classes, jnp.int32)


@dataclasses.dataclass(frozen=True)
class DataFreeConditioning:
  """What a data-free student is conditioned on and how its teacher is guided.

  num_classes: the teacher's classes (0 = an unconditional teacher).
  w_range: (w_min, w_max) for a w-conditioned student (w drawn per example), else None.
  guidance_weight: the teacher's fixed w when the student has no w-embedding.
  """
  num_classes: int = 0
  w_range: Optional[tuple[float, float]] = None
  guidance_weight: float = 0.0

  @classmethod
  def from_config(cls, model_config, section) -> "DataFreeConditioning":
    """From the run's `model` section and a method section with keys `w_min`, `w_max`
    (used by a w-conditioned student, model.guidance=True) and `guidance_weight` (the fixed
    w otherwise); a clear error for settings an unconditional teacher cannot honour."""
    num_classes = int(model_config.num_classes)
    guidance = bool(model_config.get("guidance", False))
    if not num_classes and (guidance or section.guidance_weight):
      raise ValueError("Guidance (model.guidance=True or a non-zero guidance_weight) needs a "
                       "class-conditional teacher: set model.num_classes to the teacher's "
                       "number of classes, or turn guidance off.")
    if guidance:
      if not section.w_min <= section.w_max:
        raise ValueError(f"w_min={section.w_min} must not exceed w_max={section.w_max}.")
      return cls(num_classes, (float(section.w_min), float(section.w_max)))
    return cls(num_classes, None, float(section.guidance_weight))

  @property
  def teacher_evaluations(self) -> float:
    """Network evaluations per example of one f_T call: 2 when guided (the conditional and
    unconditional branches), else 1."""
    guided_teacher = self.num_classes and (self.w_range is not None or self.guidance_weight)
    return 2.0 if guided_teacher else 1.0

  def check_sample_weight(self, w):
    """Raise a clear error unless a student trained under this conditioning can sample at
    `sample.guidance_weight` w: a w-conditioned student at any w; one that learned the
    teacher at a fixed w only at that w (0 = the one it learned)."""
    if self.num_classes and self.w_range is None and w not in (0.0, self.guidance_weight):
      raise ValueError(f"This student learned the teacher guided at the fixed w="
                       f"{self.guidance_weight} and cannot sample at sample.guidance_weight="
                       f"{w}: leave it 0 (or train a w-conditioned student, "
                       "model.guidance=True).")

  def draw(self, rng, batch_size: int) -> Optional[dict]:
    """The student's training cond: None for an unconditional teacher; else {'label':
    uniform_labels} plus, for a w-conditioned student, {'w': w ~ U[w_min, w_max]}."""
    if not self.num_classes:
      return None
    label_rng, w_rng = jax.random.split(rng)
    cond = {"label": uniform_labels(label_rng, batch_size, self.num_classes)}
    if self.w_range is not None:
      cond["w"] = jax.random.uniform(w_rng, (batch_size,), jnp.float32, *self.w_range)
    return cond

  def teacher(self, denoise: Denoiser) -> Denoiser:
    """f_T as a Denoiser (params, z, t, cond) -> Prediction, for a cond from `draw` (or
    `training.samples.sample_cond`): the guided teacher at cond['w'] for a w-conditioned
    student, at `guidance_weight` otherwise. `denoise` is the teacher's own (no w-embedding)."""
    if not self.num_classes:
      return lambda params, z, t, cond=None: denoise(params, z, t, None)

    def f_teacher(params, z, t, cond) -> Prediction:
      labels = {"label": cond["label"]}
      if self.w_range is not None:
        return guided(denoise, cond["w"], self.num_classes)(params, z, t, labels)
      if self.guidance_weight == 0.0:
        return denoise(params, z, t, labels)
      return guided(denoise, self.guidance_weight, self.num_classes)(params, z, t, labels)

    return f_teacher
