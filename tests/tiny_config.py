"""A digits teacher with a small MLP and short schedules, for fast tests.

Usable from the command line too: --config=tests/tiny_config.py
"""
import ml_collections

from configs.teacher import get_config as teacher_config


def tiny_teacher_config(**overrides) -> ml_collections.ConfigDict:
  config = teacher_config("digits")
  config.model = ml_collections.ConfigDict(dict(
      name="mlp", hidden=32, depth=1, num_classes=0, guidance=False, dropout=0.0))
  config.batch_size = 16
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.sample_every_steps = 1000
  config.sample.update(num_steps=2, num_samples=8, batch_size=8)
  config.optim.warmup_steps = 2
  config.data.read_threads = 0
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def get_config(arg=None):
  del arg
  return tiny_teacher_config()
