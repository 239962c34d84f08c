"""The Method interface: every way of training (a teacher, each distillation) is one.

The trainer knows methods only through this interface:

  init(rng, teacher_params | None) -> student params
  init_frozen(teacher_params | None) -> what does not train (e.g. the teacher)
  loss(params, frozen, batch, rng, stage) -> (scalar loss, metrics dict)   # pure
  stages() -> the schedule, a sequence of `Stage`s
  next_frozen(frozen, params) -> frozen for the next stage (e.g. student -> teacher)
  sample(params, rng, num_samples, stage) -> images of the stage's default sampler
  stage_metrics(params, frozen, rng, stage) -> metrics logged at the end of a stage

`stage` reaches `loss` as a dict of scalar arrays (`Stage.args`), a jit argument,
so one compiled train step serves every stage.
"""
import abc
import dataclasses
from typing import Any, Optional

import jax.numpy as jnp

from diffusion.registry import Registry

Params = Any


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a schedule: `num_updates` optimizer steps with `args` to the loss."""
  num_updates: int
  args: dict = dataclasses.field(default_factory=dict)
  name: str = ""

  def jax_args(self) -> dict:
    return {k: jnp.asarray(v) for k, v in self.args.items()}


METHODS = Registry("method")
register = METHODS.register


def get_method(config) -> "Method":
  # Importing the method modules fills the registry.
  import distillation  # noqa: F401
  return METHODS.lookup(config.method)(config)


class Method(abc.ABC):
  """Base class; `config` is the run's ConfigDict."""
  needs_teacher = False

  def __init__(self, config):
    self.config = config

  @abc.abstractmethod
  def init(self, rng, teacher_params: Optional[Params]) -> Params:
    """The trainable parameters at step 0."""

  def init_frozen(self, teacher_params: Optional[Params]):
    """What the loss sees but does not train; by default the teacher's parameters."""
    return teacher_params

  @abc.abstractmethod
  def loss(self, params, frozen, batch, rng, stage):
    """(scalar loss, metrics dict); pure, jitted by the trainer."""

  @abc.abstractmethod
  def stages(self) -> list[Stage]:
    """The training schedule."""

  def next_frozen(self, frozen, params):
    """`frozen` for the next stage, given the current stage's final params."""
    return frozen

  @abc.abstractmethod
  def sample(self, params, rng, num_samples: int, stage: dict):
    """Images in [-1, 1] from the default sampler for this stage (pure, jittable)."""

  def stage_metrics(self, params, frozen, rng, stage) -> dict:
    """Scalars to log at the end of a stage (e.g. student-teacher fidelity); pure."""
    return {}
