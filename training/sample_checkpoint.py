"""`--mode=sample`: draw samples from the latest checkpoint of a workdir.

The network and process come from the config saved with the checkpoint; the
`sample` section (sampler, steps, guidance weight, count, labels) from the command line.
"""
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from eval.grid import save_grid
from training.mesh import batch_sharded, make_mesh
from training.method import get_method
from training.pretrained import load_params


def saved_run_config(workdir: str, sample_config) -> ml_collections.ConfigDict:
  """The run's saved config with `sample_config` in place of its `sample` section."""
  from training.checkpoint import read_config
  config = ml_collections.ConfigDict(read_config(workdir))
  config.sample = sample_config
  return config


def sample_from_workdir(workdir: str, sample_config, mesh=None):
  """Write <workdir>/samples/<sampler>_<steps>steps[_w<w>].png and .npz; returns the images."""
  mesh = mesh or make_mesh()
  config = saved_run_config(workdir, sample_config)
  sc = config.sample
  method = get_method(config)
  params, _, step = load_params(workdir, "ema_params" if sc.use_ema else "params", mesh)
  if sc.batch_size % mesh.size:
    raise ValueError(f"sample.batch_size={sc.batch_size} must be divisible by the "
                     f"{mesh.size} devices.")
  sample_fn = jax.jit(method.sample, static_argnums=2, out_shardings=batch_sharded(mesh))
  stage = {"num_steps": np.int32(sc.num_steps)}
  num_batches = -(-sc.num_samples // sc.batch_size)
  batches = []
  for i in range(num_batches):
    images = sample_fn(params, jax.random.fold_in(jax.random.PRNGKey(config.seed), i),
                       sc.batch_size, stage)
    batches.append(np.asarray(multihost_utils.process_allgather(images, tiled=True)))
    logging.info("sampled batch %d/%d (%d images)", i + 1, num_batches, sc.batch_size)
    print(f"\rsampling: {i + 1}/{num_batches} batches", end="", flush=True)
  print()
  images = np.concatenate(batches)[:sc.num_samples]
  name = f"{sc.sampler}_{sc.num_steps}steps" + (f"_w{sc.guidance_weight:g}" if sc.guidance_weight else "")
  out = os.path.join(workdir, "samples", f"{name}_ckpt{step}")
  if jax.process_index() == 0:
    save_grid(images[:256], out + ".png")
    np.savez(out + ".npz", images=images)
    logging.info("wrote %s.png and %s.npz", out, out)
    print(f"wrote {out}.png and {out}.npz")
  return images
