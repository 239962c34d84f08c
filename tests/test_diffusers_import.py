"""Importing a diffusers UNet2DModel teacher, checked against diffusers itself: the network's
output, the DDPM process's alpha_bar, an 8-step DDIM sample, distillation from the import,
and the errors for bad input."""
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bench.import_parity import CONFIGS, parity, random_diffusers_unet
from commands.import_diffusers import DiffusersImportError, import_teacher
from configs import progressive as progressive_configs
from configs import sid as sid_configs
from configs.teacher import digits
from diffusion.diffusers_weights import WeightMappingError
from diffusion.networks import build_denoiser
from diffusion.processes import DiscreteDDPM
from infra.checkpoint import read_config
from infra.mesh import make_mesh
from infra.params import load_params
from sampling.clipping import clipped
from sampling.samplers import get_sampler
from training.trainer import Trainer

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# An 8x8 one-channel model (the digits data's shape), attention at the lower level.
TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
            attention_head_dim=8, norm_num_groups=4)
# One level with only the mid-block's attention: the distillation runs' network (compile time).
ONE_LEVEL = dict(TINY, block_out_channels=(8,), down_block_types=("DownBlock2D",),
                 up_block_types=("UpBlock2D",))
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_output_equals_diffusers_on_random_weights(name):
  """Measured (bench.import_parity): 4.2e-6, 1.7e-6, 9.5e-7 at outputs of size 1.4-2.6."""
  diff, scale = parity(name)
  assert scale > 0.5 and diff <= 1e-4, (diff, scale)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alpha_bar_at_every_step_is_the_ddpm_schedulers(schedule):
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule,
                                      beta_start=1e-4 if schedule == "linear" else 8.5e-4,
                                      beta_end=0.02 if schedule == "linear" else 0.012)
  want = scheduler.alphas_cumprod.numpy()
  process = DiscreteDDPM(schedule, scheduler.config.beta_start, scheduler.config.beta_end, 1000)
  t = (np.arange(1000) + 1.0) / 1000
  alpha, _ = process.alpha_sigma(t)
  np.testing.assert_allclose(np.asarray(alpha) ** 2, want, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(process.network_time(t)), np.arange(1000), atol=1e-4)
  between = np.concatenate([[0.0, 1e-4, 5e-4], np.linspace(0.001, 1.0, 97) - 3e-4])
  lam = process.logsnr(between)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  np.testing.assert_allclose(np.asarray(process.time_of_logsnr(lam)), between, atol=2e-6)


def write_source(folder, config=TINY, scheduler=SCHEDULER):
  """A random diffusers model and DDPM scheduler saved as diffusers saves them."""
  model = random_diffusers_unet(dict(config))
  model.save_pretrained(folder, safe_serialization=True)
  diffusers.DDPMScheduler(**scheduler).save_pretrained(folder)
  return model


def import_into(tmp_path_factory, config):
  """(diffusers model, teacher workdir) of a random `config` imported into a digits config."""
  source = tmp_path_factory.mktemp("source")
  model = write_source(source, config)
  workdir = str(tmp_path_factory.mktemp("teacher"))
  import_teacher(str(source), digits(), workdir)
  return model, workdir


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  return import_into(tmp_path_factory, TINY)


@pytest.fixture(scope="module")
def imported_one_level(tmp_path_factory):
  return import_into(tmp_path_factory, ONE_LEVEL)


def diffusers_ddim(model, noise, num_steps):
  """diffusers' DDIM (eta 0, trailing spacing, x0 clipped and eps re-derived from it)."""
  scheduler = diffusers.DDIMScheduler(**SCHEDULER, timestep_spacing="trailing")
  scheduler.set_timesteps(num_steps)
  sample = torch.from_numpy(noise.transpose(0, 3, 1, 2))
  with torch.no_grad():
    for t in scheduler.timesteps:
      sample = scheduler.step(model(sample, t).sample, t, sample, eta=0.0,
                              use_clipped_model_output=True).prev_sample
  return sample.numpy().transpose(0, 2, 3, 1), scheduler.timesteps.numpy()


def test_eight_step_ddim_equals_diffusers_from_the_same_noise(imported):
  model, workdir = imported
  config = ml_collections.ConfigDict(read_config(workdir))
  assert config.diffusion.process == "ddpm" and config.diffusion.parameterization == "eps"
  _, process, denoise = build_denoiser(config)
  params = load_params(workdir, mesh=make_mesh(1))[0]
  noise = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
  want, timesteps = diffusers_ddim(model, noise, 8)
  np.testing.assert_array_equal(timesteps, 1000 - 125 * np.arange(1, 9) + 124)
  assert np.array_equal(process.network_time(np.arange(8, 0, -1) / 8), timesteps)
  got = get_sampler("ddim")(clipped(denoise, process), params, jnp.asarray(noise),
                            process=process, num_steps=8)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
  assert np.abs(want).max() > 0.1


def distill_config(method, workdir, num_train_steps):
  """Two short stages (progressive: 4 -> 2 -> 1 steps) or 6 SiD updates from the import."""
  arg = f"pretrained={workdir}"
  if method == "progressive":
    c = progressive_configs.get_config(arg)
    c.distill.update(teacher_steps=4, steps_per_stage=3, fidelity_samples=8)
  else:
    c = sid_configs.get_config(arg)
    c.sid.num_updates = 6
  c.update(batch_size=8, num_train_steps=num_train_steps, checkpoint_every_steps=3,
           sample_every_steps=1000, log_every_steps=3)
  c.sample.update(num_samples=8, batch_size=8)
  c.data.read_threads = 0
  return c


@pytest.mark.slow
@pytest.mark.parametrize("method", ["progressive", "sid"])
def test_distillation_from_the_import_resumes_bit_exact(imported_one_level, tmp_path, method):
  _, teacher = imported_one_level
  full = Trainer(distill_config(method, teacher, 6), str(tmp_path / "full"), make_mesh(1)).run()
  workdir = str(tmp_path / "stopped")
  for stop in (3, 6):
    state = Trainer(distill_config(method, teacher, stop), workdir, make_mesh(1)).run()
    assert int(state.step) == stop
  leaves = lambda s: jax.tree.leaves(jax.device_get((s.params, s.ema_params, s.opt_state)))
  for a, b in zip(leaves(full), leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)
  assert int(full.stage_index) == (1 if method == "progressive" else 0)


def test_folder_without_config_json(tmp_path):
  with pytest.raises(DiffusersImportError, match="No config.json"):
    import_teacher(str(tmp_path), digits(), str(tmp_path / "out"))


def edited_source(tmp_path, imported_source, edit):
  """A copy of a saved source folder with config.json changed by `edit`."""
  folder = tmp_path / "edited"
  shutil.copytree(imported_source, folder)
  config = json.loads((folder / "config.json").read_text())
  edit(config)
  (folder / "config.json").write_text(json.dumps(config))
  return str(folder)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  folder = tmp_path_factory.mktemp("bad_source")
  write_source(folder)
  return folder


def test_unknown_block_type_is_named(tmp_path, source):
  folder = edited_source(tmp_path, source, lambda c: c.update(
      down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"]))
  with pytest.raises(DiffusersImportError, match="CrossAttnDownBlock2D"):
    import_teacher(folder, digits(), str(tmp_path / "out"))


def test_shape_mismatch_names_the_tensor(tmp_path, source):
  folder = edited_source(tmp_path, source, lambda c: c.update(in_channels=3))
  with pytest.raises(WeightMappingError, match=r"shape mismatch: tensor 'conv_in.weight'"):
    import_teacher(folder, digits(), str(tmp_path / "out"))


def test_bin_weights_are_refused(tmp_path, source):
  folder = tmp_path / "bin"
  shutil.copytree(source, folder)
  (folder / "diffusion_pytorch_model.safetensors").rename(folder / "diffusion_pytorch_model.bin")
  with pytest.raises(DiffusersImportError, match="safe_serialization=True"):
    import_teacher(str(folder), digits(), str(tmp_path / "out"))
