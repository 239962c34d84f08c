"""`--mode=sample`: draw samples from a checkpoint of a workdir (`sample.checkpoint`: the best
one by held-out loss when the run kept one, else the latest; or 'latest', or a step).

The network and process come from the config saved with the checkpoint; the
`sample` section (sampler, steps, guidance weight, count, labels) from the command line.
"""
import jax
import ml_collections
import numpy as np
from absl import logging

from eval.generate import generate
from infra import checkpoint
from infra.checkpoint import read_config
from infra.grid import save_grid
from infra.mesh import make_mesh
from infra.npz_tree import write_npz
from infra.params import load_params
from training.method import get_method


def saved_run_config(workdir: str, sample_config) -> ml_collections.ConfigDict:
  """The run's saved config with `sample_config` in place of its `sample` section."""
  config = ml_collections.ConfigDict(read_config(workdir))
  config.sample = sample_config
  return config


def report(done: int, total: int):
  """A progress line over batches."""
  logging.info("sampled batch %d/%d", done, total)
  print(f"\rsampling: {done}/{total} batches", end="", flush=True)


def sample_from_workdir(workdir: str, sample_config, mesh=None):
  """Write <workdir>/samples/<sampler>_<steps>steps[_w<w>].png and .npz; returns the images."""
  mesh = mesh or make_mesh()
  config = saved_run_config(workdir, sample_config)
  sc = config.sample
  method = get_method(config)
  step, what = checkpoint.select_step(workdir, sc.get("checkpoint", "best"))
  logging.info("sampling %s: step %d", what, step)
  print(f"sampling {what}: step {step} (--config.sample.checkpoint=best|latest|<step>)")
  params, _, step = load_params(workdir, "ema_params" if sc.use_ema else "params", mesh, step)
  sample_fn = method.sample
  if sc.get("all_resolutions", False):   # a nested model: one array per resolution
    if not hasattr(method, "sample_resolutions"):
      raise ValueError(f"sample.all_resolutions=True needs a multi-resolution (matryoshka) run; "
                       f"{workdir} was trained with method {config.method!r}.")
    sample_fn = method.sample_resolutions
  draw = lambda rng, batch_size, params, stage: sample_fn(params, rng, batch_size, stage)
  images = generate(draw, sc.num_samples, sc.batch_size, jax.random.PRNGKey(config.seed), mesh,
                    args=(params, {"num_steps": np.int32(sc.num_steps)}), progress=report)
  print()
  lower = ()
  if isinstance(images, tuple):   # lowest first: written as <name>_<H>px.png, npz key images_<H>px
    *lower, images = images
  name = f"{sc.sampler}_{sc.num_steps}steps"
  if sc.guidance_weight:
    name += f"_w{sc.guidance_weight:g}"
  out = checkpoint.workdir_path(workdir) / "samples" / f"{name}_ckpt{step}"
  if jax.process_index() == 0:
    save_grid(images[:256], f"{out}.png")
    for low in lower:
      save_grid(low[:256], f"{out}_{low.shape[1]}px.png")
    write_npz(f"{out}.npz", images=images,
              **{f"images_{low.shape[1]}px": low for low in lower})
    logging.info("wrote %s.png and %s.npz", out, out)
    print(f"wrote {out}.png and {out}.npz")
  return images
