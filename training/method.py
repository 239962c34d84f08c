"""The Method interface: every way of training (a teacher, each distillation) is one.

The trainer knows methods only through this interface:

  init(rng, teacher_params | None) -> student params
  init_frozen(teacher_params | None) -> what does not train (e.g. the teacher)
  loss(params, frozen, batch, rng, stage, ema) -> (scalar loss, metrics dict)   # pure
  lr_scales(params) -> None, or a pytree like params of per-leaf learning-rate factors
  stages() -> the schedule, a sequence of `Stage`s
  next_frozen(frozen, params) -> frozen for the next stage (e.g. student -> teacher)
  sample(params, rng, num_samples, stage) -> images of the stage's default sampler
  stage_metrics(params, frozen, rng, stage) -> metrics logged at the end of a stage
  teacher_shapes() -> the teacher parameters `init` takes, as shapes (planning without them)
  offline_data() -> None, or the spec of offline teacher samples to train on (training/offline.py)
  heldout_loss(params, frozen, batch, rng, stage) -> scalar scored every `eval_every_steps`

`stage` reaches `loss` as a dict of scalar arrays (`Stage.args`), a jit argument,
so one compiled train step serves every stage. `ema` is an EMA of the trained parameters
before this update (the target network of consistency-style losses): the second, target EMA
(rate `target_ema_decay()`, never restarted) when the method asks for one, else the sampling
EMA (optim.ema_decay); the gradient is taken with respect to `params` only.

Class attributes: `restart_at_stage` (True: Adam and the sampling EMA restart at every stage
boundary, as progressive distillation's stages are new students; False: they run on across a
curriculum, as consistency's N(k) and the Catch-Up one-step points); `needs_teacher` (the
trainer loads the EMA parameters of the workdir named by the config key `teacher_workdir_key`, by default `teacher.workdir`, and passes them to
`init` / `init_frozen`; Matryoshka's growth names `mdm.inner_workdir`); `needs_data` (False
for data-free methods: the trainer opens no dataset and the batch is only {'index': int32
(B,)}, the global example counter, see training.data.make_index_iterator).
"""
import abc
import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from diffusion.networks import init_params
from diffusion.registry import Registry
from training.samples import sample_images

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
  """The registered method `config.method` of `config`; the registry is filled by importing
  the `distillation` package (commands/ does, before any mode runs)."""
  if not METHODS:
    raise RuntimeError("No method is registered: import the `distillation` package (or "
                       "`commands`, which does) before asking for a method.")
  return METHODS.lookup(config.method)(config)


class Method(abc.ABC):
  """Base class; `config` is the run's ConfigDict."""
  needs_teacher = False
  teacher_workdir_key = "teacher.workdir"
  needs_data = True
  restart_at_stage = True

  def __init__(self, config):
    self.config = config

  def target_ema_decay(self) -> Optional[float]:
    """None, or the rate mu of a second EMA of params, the loss's `ema` (theta- <- mu theta- +
    (1 - mu) theta after every update; never restarted at a stage boundary)."""
    return None

  @abc.abstractmethod
  def init(self, rng, teacher_params: Optional[Params]) -> Params:
    """The trainable parameters at step 0."""

  def init_frozen(self, teacher_params: Optional[Params]):
    """What the loss sees but does not train; by default the teacher's parameters."""
    return teacher_params

  @abc.abstractmethod
  def loss(self, params, frozen, batch, rng, stage, ema=None):
    """(scalar loss, metrics dict); pure, jitted by the trainer; `ema` is the EMA of params."""

  @abc.abstractmethod
  def stages(self) -> list[Stage]:
    """The training schedule."""

  def lr_scales(self, params):
    """Per-leaf learning-rate factors (a pytree like params), e.g. one per network of a
    two-network method; None = every leaf at optim.lr."""
    return None

  def teacher_evaluations_per_example(self, stage: Stage) -> float:
    """Teacher network evaluations per training example in one update of `stage` (the
    training cost the comparison report shows); 0 for methods that learn from data."""
    return 0.0

  def teacher_shapes(self):
    """The teacher parameters `init` takes, as jax.ShapeDtypeStructs (`--mode=plan` without
    the teacher's workdir): by default those of the method's `teacher_network` (else its
    `network`) at data.shape."""
    network = getattr(self, "teacher_network", None) or self.network
    return jax.eval_shape(lambda: init_params(network, jax.random.PRNGKey(0),
                                              tuple(self.config.data.shape)))

  def offline_data(self):
    """None, or a training.offline.OfflineData: the method trains on offline samples of its
    teacher (its generator gets the teacher's EMA params), written by `--mode=pairs` to
    `offline_dir` (default <workdir>/pairs); the trainer then reads batches of the
    generator's keys from the 'train' split in place of a dataset, and the held-out loss
    from the 'heldout' split."""
    return None

  def heldout_loss(self, params, frozen, batch, rng, stage):
    """The scalar the trainer scores the EMA params by on held-out batches every
    `eval_every_steps` (the best checkpoint has the lowest); default: the training loss."""
    return self.loss(params, frozen, batch, rng, stage)[0]

  def next_frozen(self, frozen, params):
    """`frozen` for the next stage, given the current stage's final params."""
    return frozen

  def sample(self, params, rng, num_samples: int, stage: dict):
    """Images in [-1, 1] from the default sampler for this stage (pure, jittable).

    Default: `config.sample`'s sampler with the stage's `num_steps` over `self.denoise` and
    `self.process` (training.samples.sample_images, which draws z_1 the way every method
    shares); methods that sample otherwise override it.
    """
    return sample_images(self.config, self.denoise, self.process, params, rng, num_samples,
                         stage["num_steps"])

  def stage_metrics(self, params, frozen, rng, stage) -> dict:
    """Scalars to log at the end of a stage (e.g. student-teacher fidelity); pure."""
    return {}
