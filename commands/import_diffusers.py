"""`--mode=import --source=<diffusers model folder> --workdir=<new teacher workdir>`: a teacher
trained with diffusers (a UNet2DModel: config.json + diffusion_pytorch_model.safetensors, and
a scheduler_config.json) as this project's teacher workdir, which --mode=sample, --mode=eval
and every distillation's teacher.workdir take.

The run config is --config (its data, sample and eval sections) with the `model` section
read from config.json (network 'diffusers_unet'), the `diffusion` process and
parameterization from scheduler_config.json (process 'ddpm'), and data.shape / num_classes
from the model. The weights are read with safetensors' numpy API (no torch) and saved as both
params and ema_params of checkpoint 0 (the imported teacher has no schedule of its own here).
"""
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from configs.base import DATASETS
from diffusion.diffusers_unet import model_settings
from diffusion.diffusers_weights import params_from_state_dict
from diffusion.networks import build_network, init_params
from infra import checkpoint

WEIGHTS = "diffusion_pytorch_model.safetensors"
# diffusers' prediction_type -> this project's parameterization.
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x"}
# scheduler_config.json keys whose only value the DDPM process implements -> that value.
SCHEDULER_FIXED = {"trained_betas": None, "rescale_betas_zero_snr": False,
                   "thresholding": False, "clip_sample_range": 1.0}


class DiffusersImportError(ValueError):
  """A diffusers folder that cannot be imported, with what to do about it."""


def model_folder(source: str) -> epath.Path:
  """The folder holding the UNet's config.json: `source`, or its `unet/` (a pipeline)."""
  path = epath.Path(source)
  for folder in (path, path / "unet"):
    if (folder / "config.json").exists():
      return folder
  raise DiffusersImportError(
      f"No config.json in {path} (nor in {path / 'unet'}): --source must be a diffusers "
      f"UNet2DModel folder (what save_pretrained writes) or a pipeline folder with unet/.")


def read_json(path: epath.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DiffusersImportError(f"{path} is not valid JSON: {e}") from e


def read_weights(folder: epath.Path) -> dict:
  """name -> numpy array of the folder's safetensors file (the .bin pickle format refused)."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  path = folder / WEIGHTS
  if not path.exists():
    if (folder / "diffusion_pytorch_model.bin").exists():
      raise DiffusersImportError(
          f"{folder} holds diffusion_pytorch_model.bin (a torch pickle), which this import "
          f"does not read (unpickling runs code, and needs torch): convert it once where "
          f"diffusers is installed: UNet2DModel.from_pretrained(folder).save_pretrained(folder, "
          f"safe_serialization=True), which writes {WEIGHTS}.")
    raise DiffusersImportError(f"No {WEIGHTS} in {folder}.")
  return load_file(os.fspath(path))


def scheduler_config(source: str, folder: epath.Path) -> dict:
  """scheduler_config.json beside the model, in <source>/scheduler/ or <folder>/../scheduler/."""
  root = epath.Path(source)
  places = [folder, root, root / "scheduler", folder.parent / "scheduler"]
  for place in places:
    if (place / "scheduler_config.json").exists():
      return read_json(place / "scheduler_config.json")
  raise DiffusersImportError(
      f"No scheduler_config.json in {sorted(set(map(str, places)))}: the scheduler sets the "
      f"noise process; save the model's DDPMScheduler there (scheduler.save_pretrained(folder)).")


def diffusion_section(scheduler: dict) -> dict:
  """The `diffusion` keys (process 'ddpm', its betas, the parameterization) and sample.clip_x
  of a diffusers scheduler config."""
  for key, value in SCHEDULER_FIXED.items():
    if scheduler.get(key, value) != value:
      raise DiffusersImportError(f"scheduler_config.json: {key}={scheduler[key]!r} is not "
                                 f"implemented (only {value!r}).")
  prediction = scheduler.get("prediction_type", "epsilon")
  if prediction not in PREDICTIONS:
    raise DiffusersImportError(f"scheduler_config.json: prediction_type {prediction!r} is not "
                               f"one of {sorted(PREDICTIONS)}.")
  ddpm = dict(beta_schedule=scheduler.get("beta_schedule", "linear"),
              beta_start=float(scheduler.get("beta_start", 1e-4)),
              beta_end=float(scheduler.get("beta_end", 0.02)),
              num_train_timesteps=int(scheduler.get("num_train_timesteps", 1000)))
  return dict(process="ddpm", parameterization=PREDICTIONS[prediction], ddpm=ddpm)


def imported_config(config, unet: dict, scheduler: dict) -> ml_collections.ConfigDict:
  """`config` with the model, diffusion and data shape of the diffusers checkpoint."""
  c = config.copy_and_resolve_references()
  settings = model_settings(unet)
  c.model = ml_collections.ConfigDict(dict(name="diffusers_unet", **settings))
  diffusion = diffusion_section(scheduler)
  c.diffusion.update(process=diffusion["process"],
                     parameterization=diffusion["parameterization"])
  c.diffusion.ddpm.update(diffusion["ddpm"])
  c.sample.clip_x = bool(scheduler.get("clip_sample", True))
  size = unet.get("sample_size", 32)
  size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
  c.data.shape = size + (settings.get("in_channels", 3),)
  c.data.num_classes = settings["num_classes"]
  dataset_shape = DATASETS.get(c.data.name, (c.data.shape,))[0]
  if tuple(dataset_shape) != c.data.shape:
    print(f"note: the model's images are {c.data.shape}, the dataset {c.data.name!r}'s "
          f"{tuple(dataset_shape)}: methods that read data need a matching dataset "
          f"(--config=configs/teacher.py:<preset>); data-free ones (sid) do not.")
  c.method = "teacher"
  c.num_train_steps = 0   # imported: no training schedule here
  return c


def import_teacher(source: str, config, workdir: str) -> ml_collections.ConfigDict:
  """Write checkpoint 0 of `workdir` from the diffusers folder `source`; returns its config."""
  if not source:
    raise DiffusersImportError("--mode=import needs --source=<a diffusers UNet2DModel folder>.")
  folder = model_folder(source)
  unet = read_json(folder / "config.json")
  try:
    c = imported_config(config, unet, scheduler_config(source, folder))
  except ValueError as e:
    raise DiffusersImportError(f"{folder}: {e}") from e
  if checkpoint.checkpoint_dir(workdir).exists():
    raise DiffusersImportError(f"{checkpoint.checkpoint_dir(workdir)} exists: import into a new "
                               f"workdir.")
  network = build_network(c.model)
  like = jax.eval_shape(lambda: init_params(network, jax.random.PRNGKey(0), c.data.shape))
  params = params_from_state_dict(read_weights(folder), like)
  count = sum(np.size(a) for a in jax.tree.leaves(params))
  state = {"step": np.int32(0), "params": params, "ema_params": params}
  manager = checkpoint.make_manager(workdir)
  manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(c.to_dict())))
  manager.wait_until_finished()
  print(f"imported {folder}: {count:,} parameters, process ddpm "
        f"({c.diffusion.ddpm.beta_schedule}, T={c.diffusion.ddpm.num_train_timesteps}), "
        f"parameterization {c.diffusion.parameterization} -> {checkpoint.checkpoint_dir(workdir)}")
  return c
