"""Presets over a teacher imported with --mode=import (a diffusers checkpoint):
--config=configs/<method>.py:pretrained=<teacher workdir> starts from that workdir's saved
config (its network, DDPM process, parameterization and data) with teacher.workdir set.
"""
from typing import Optional

import ml_collections

from infra.checkpoint import read_config

PREFIX = "pretrained="


def workdir_of(arg: Optional[str]) -> Optional[str]:
  """The teacher workdir of a `pretrained=<workdir>` preset argument, else None."""
  if arg and arg.startswith(PREFIX):
    return arg[len(PREFIX):]
  return None


def teacher(workdir: str) -> ml_collections.ConfigDict:
  """The saved config of the teacher in `workdir`, with teacher.workdir = workdir."""
  c = ml_collections.ConfigDict(read_config(workdir))
  c.teacher.workdir = workdir
  return c
