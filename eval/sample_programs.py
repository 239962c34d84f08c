"""How a trained run samples, for evaluation: its saved config with a chosen sampler and
guidance weight, the network evaluations that costs, and one jitted program per config.

NFE (network evaluations per sample) = the sampler's own count from the sampler registry,
`sampling.SAMPLERS[name].nfe(num_steps)` (num_steps for ddim, ancestral, stochastic, euler;
2 num_steps - 1 for heun and 4 num_steps - 3 for rk4, whose last interval is one DDIM step),
times 2 when classifier-free guidance runs through `sampling.guided` on the doubled batch, i.e.
for a class-conditional model without a w-embedding at a guidance weight w != 0 (w = 0 is the
conditional branch alone). A w-conditioned student counts 1.

Programs: `sample_program(config)` is f(rng, batch_size, params, num_steps) -> images of the
config's method (`Method.sample` with stage {'num_steps': num_steps}). Configs that differ only
in training-only keys or sample counts share one function object, so `jax.jit` (e.g. in
eval/generate.py) compiles it once for every checkpoint of a run and every traced num_steps.
"""
import json
from typing import Callable

import ml_collections
from absl import logging

from sampling import SAMPLERS, decoders
from training.method import get_method

# Keys of a run config that do not change how its checkpoints sample (left out of program keys).
TRAINING_ONLY = ("optim", "teacher", "eval", "seed", "batch_size", "num_train_steps",
                 "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                 "keep_checkpoints", "max_nonfinite_in_row")
SAMPLE_COUNTS = ("num_steps", "num_samples", "batch_size")


def guided_batch(config) -> bool:
  """Whether sampling runs classifier-free guidance on a doubled batch (sampling.guided): a
  class-conditional model without a w-embedding at sample.guidance_weight != 0."""
  return (bool(config.model.num_classes) and not config.model.get("guidance", False)
          and float(config.sample.guidance_weight) != 0.0)


def nfe(config, sampler: str, num_steps: int) -> int:
  """SAMPLERS[sampler].nfe(num_steps) * (2 if guided_batch(config) else 1)."""
  if sampler not in decoders():
    raise ValueError(f"Cannot evaluate sampler {sampler!r}; choose one of {decoders()}.")
  return SAMPLERS[sampler].nfe(num_steps) * (2 if guided_batch(config) else 1)


def guidance_weights_for(config, weights) -> list[float]:
  """`weights` for a class-conditional model; [0.0] (with a warning if others were asked for)
  for an unconditional one."""
  weights = [float(w) for w in weights]
  if config.model.num_classes:
    return weights
  if any(weights):
    logging.warning("Guidance weights %s ignored: the model is unconditional.", weights)
  return [0.0]


def sampling_config(saved_config: dict, sampler: str, guidance_weight: float,
                    clip_x: bool = True):
  """The saved run config with `sample.sampler`, `sample.guidance_weight` and `sample.clip_x`
  replaced (evaluation decides clipping for every row alike)."""
  config = ml_collections.ConfigDict(saved_config)
  config.sample.sampler = sampler
  config.sample.guidance_weight = float(guidance_weight)
  config.sample.clip_x = bool(clip_x)
  return config


def program_key(config) -> str:
  """JSON of the config without its training-only keys and sample counts."""
  tree = {k: v for k, v in config.to_dict().items() if k not in TRAINING_ONLY}
  tree["sample"] = {k: v for k, v in tree["sample"].items() if k not in SAMPLE_COUNTS}
  return json.dumps(tree, sort_keys=True)


_PROGRAMS: dict[str, Callable] = {}


def sample_program(config) -> Callable:
  """f(rng, batch_size, params, num_steps) -> images of the config's method, one function
  object per program key (so jit compiles it once for every params and num_steps)."""
  key = program_key(config)
  if key not in _PROGRAMS:
    method = get_method(config)

    def sample(rng, batch_size, params, num_steps):
      return method.sample(params, rng, batch_size, {"num_steps": num_steps})

    _PROGRAMS[key] = sample
  return _PROGRAMS[key]
