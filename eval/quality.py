"""Sample quality of trained checkpoints under given samplers: one row of metrics per `Entry`.

An Entry is (workdir, checkpoint step, sampler, num_steps, guidance weight). `evaluate` draws
`num_samples` images of each, sharded over the mesh (eval/generate.py), all from the SAME noise:
batch i uses key fold_in(PRNGKey(seed), i), from which training.samples.sample_images draws
z_1 the same way for any model of the data shape. The network, process and labels come from
the config saved with the checkpoint; the images from its method's `sample`. A row holds:

  nfe                 network evaluations per sample (eval/sample_programs.py): the sampler
                      registry's count (num_steps for ddim, ancestral, stochastic, euler;
                      2 N - 1 for heun, 4 N - 3 for rk4), times 2 for classifier-free
                      guidance through `sampling.guided` (a class-conditional model without a
                      w-embedding, at w != 0; w = 0 runs the conditional branch alone).
  seconds_per_image   wall time of drawing the samples / number drawn (batches are full), after
                      compilation (each program is compiled by a one-batch, one-step warm-up).
  FD-<dataset>        metric 'fd_dataset': Frechet distance of the dataset classifier's features
                      of the samples to those of the `reference_split` images (default the
                      train split; eval/quality_features.py). Rows with FD-<dataset> or FID
                      hold `reference_images`, the number of images of that split.
  fidelity_mse, fidelity_psnr
                      metric 'fidelity': MSE / PSNR = 10 log10(4 / MSE) against the reference
                      model's `reference_steps`-step DDIM samples from the same noise (and w);
                      PSNR is inf for identical samples. Skipped without a reference workdir.
  FID, IS, IS_std     metric 'fid': with the FID Inception (a missing weights file is an
                      error that gives the conversion command); IS needs the classifier head.
  reference_images    the first N images of the reference split make the FD / FID statistics
                      (Options.reference_images; 0 = the whole split).

Compilation: one jitted program per (sampling-relevant config, sampler, w); the parameters and
num_steps are jit arguments (num_steps is traced), so every checkpoint of a run and every step
count share one program. Rows are plain JSON-able dicts (eval/quality_table.py formats them).
"""
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from typing import Callable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from diffusion.registry import Registry
from eval import classifier, fidelity, frechet, generate, inception, metrics, reference
from eval.quality_features import Features, batches, classifier_features, inception_features
from eval.quality_table import row_name
from eval.sample_programs import nfe, sample_program, sampling_config
from infra import checkpoint
from infra.files import atomic_write
from infra.grid import save_grid
from infra.mesh import make_mesh
from infra.params import load_params

INCEPTION_BATCH = 50


@dataclasses.dataclass(frozen=True)
class Entry:
  """One row to evaluate. step None = the latest checkpoint; which '' = 'ema_params' if the
  saved config's sample.use_ema else 'params'; name '' = the workdir's base name."""
  workdir: str
  num_steps: int
  sampler: str = "ddim"
  guidance_weight: float = 0.0
  step: Optional[int] = None
  which: str = ""
  name: str = dataclasses.field(default="", compare=False)
  reference: str = dataclasses.field(default="", compare=False)   # '' = the evaluator's

  @property
  def model(self) -> str:
    return self.name or os.path.basename(os.path.normpath(self.workdir))


@dataclasses.dataclass(frozen=True)
class Options:
  """How to evaluate: sample count, metrics, the fidelity reference's steps, where the
  classifier and Inception weights are ('' = defaults), the dataset split of the FD / FID
  reference statistics, and where to save sample grids."""
  num_samples: int = 1000
  batch_size: int = 250
  metrics: tuple = ("fd_dataset", "fidelity")
  reference_steps: int = 256
  classifier_dir: str = ""
  classifier_steps: int = 500
  inception_weights: str = ""
  seed: int = 0
  grid_dir: str = ""
  grid_samples: int = 64
  reference_split: str = "train"
  reference_images: int = 0   # the first N images of reference_split (0 = all of it)
  clip_x: bool = True   # x_hat clipped to [-1, 1] at every sampler step (sample.clip_x)
  row_dir: str = ""     # finished rows and reference samples saved here are reused by a
                        # rerun ('' = none)


def metric_settings(options: Options) -> dict:
  """What makes two evaluations' metrics comparable: reports merge rows only when these agree,
  and --mode=eval writes them beside its rows."""
  settings = dict(num_samples=options.num_samples, seed=options.seed,
                  metrics=list(options.metrics), reference_steps=options.reference_steps,
                  reference_split=options.reference_split,
                  reference_images=options.reference_images or "all", clip_x=options.clip_x)
  if "fid" in options.metrics:
    settings["fid_resize"] = inception.RESIZE_CONVENTION
  return settings


def parse_list(value, kind=str) -> list:
  """'1,2,4' (or one value, or a sequence) -> [kind(v), ...]."""
  items = value.split(",") if isinstance(value, str) else np.atleast_1d(value).tolist()
  return [kind(v.strip() if isinstance(v, str) else v) for v in items if str(v).strip()]


def options_from_config(eval_config, **overrides) -> Options:
  """Options from the `eval` config section (configs/base.py), with keyword overrides."""
  ec = eval_config
  options = Options(num_samples=ec.num_samples, batch_size=ec.batch_size,
                    metrics=tuple(parse_list(ec.metrics)), reference_steps=ec.reference_steps,
                    classifier_dir=ec.classifier_dir, classifier_steps=ec.classifier_steps,
                    inception_weights=ec.inception_weights, seed=ec.seed,
                    reference_split=ec.reference_split,
                    reference_images=ec.reference_images, clip_x=ec.clip_x)
  return dataclasses.replace(options, **overrides)


class Samples(NamedTuple):
  """An entry's images (on every host), the seconds per image, and the config it sampled with."""
  images: np.ndarray
  seconds_per_image: float
  config: ml_collections.ConfigDict


def data_multiple(batch_size: int, mesh) -> int:
  """`batch_size` rounded up to a multiple of the mesh's 'data' axis (logged if changed)."""
  size = mesh.shape["data"]
  rounded = -(-batch_size // size) * size
  if rounded != batch_size:
    logging.info("eval batch size %d -> %d (a multiple of %d devices)", batch_size, rounded, size)
  return rounded


# Feature networks of the metrics: f(options, dataset, data_dir) -> Features | None.
FEATURES: dict[str, Callable] = {
    "classifier": lambda o, dataset, data_dir: classifier_features(
        dataset, o.classifier_dir, o.classifier_steps, data_dir, o.reference_split,
        o.reference_images),
    "inception": lambda o, dataset, data_dir: inception_features(
        dataset, o.inception_weights, data_dir, o.reference_split, o.reference_images),
}
METRICS = Registry("metric")
register_metric = METRICS.register


class Evaluator:
  """Draws and scores entries; caches loaded runs, compiled programs and reference samples."""

  def __init__(self, options: Options, reference_workdir: str = "", mesh=None):
    unknown = sorted(set(options.metrics) - set(METRICS))
    if unknown:
      raise ValueError(f"Unknown metrics {unknown}; choose from {sorted(METRICS)}.")
    self.mesh = mesh or make_mesh()
    self.options = dataclasses.replace(options, batch_size=data_multiple(options.batch_size,
                                                                         self.mesh))
    self.reference_workdir = reference_workdir
    self.rng = jax.random.PRNGKey(options.seed)
    self._runs, self._features, self._samples = {}, {}, {}
    self._warm, self._loaded = set(), (None, None)

  def resolve(self, entry: Entry) -> Entry:
    """`entry` with an absolute workdir (or its bucket URI), its checkpoint step and params
    kind filled in."""
    workdir = str(checkpoint.workdir_path(entry.workdir))
    if workdir not in self._runs:
      saved = checkpoint.read_config(workdir)
      latest = checkpoint.require_checkpoint(workdir).latest_step()
      self._runs[workdir] = (latest, "ema_params" if saved["sample"]["use_ema"] else "params")
    latest, which = self._runs[workdir]
    return dataclasses.replace(entry, workdir=workdir,
                               step=latest if entry.step is None else entry.step,
                               which=entry.which or which)

  def _load(self, entry: Entry):
    """(saved config dict, params on the mesh); keeps only the last checkpoint loaded."""
    key = (entry.workdir, entry.step, entry.which)
    if self._loaded[0] != key:
      params, saved, _ = load_params(entry.workdir, entry.which, self.mesh, entry.step)
      self._loaded = (key, (saved, params))
    return self._loaded[1]

  def _sampling_config(self, saved: dict, entry: Entry):
    """The saved config set up for the entry's sampler and guidance weight."""
    return sampling_config(saved, entry.sampler, entry.guidance_weight, self.options.clip_x)

  def _draw(self, entry: Entry) -> Samples:
    """options.num_samples images of a resolved entry, and the time per image."""
    saved, params = self._load(entry)
    config = self._sampling_config(saved, entry)
    program, bs, n = sample_program(config), self.options.batch_size, self.options.num_samples
    if program not in self._warm:
      generate.generate(program, bs, bs, self.rng, self.mesh, args=(params, np.int32(1)))
      self._warm.add(program)
    start = time.perf_counter()
    images = generate.generate(program, n, bs, self.rng, self.mesh,
                               args=(params, np.int32(entry.num_steps)))
    seconds = time.perf_counter() - start
    return Samples(images, seconds / (math.ceil(n / bs) * bs), config)

  def samples(self, entry: Entry) -> Samples:
    """Samples of a resolved entry (reference samples are drawn once and kept)."""
    return self._samples[entry] if entry in self._samples else self._draw(entry)

  def reference(self, guidance_weight: float, workdir: str = "") -> Optional[np.ndarray]:
    """The reference model's (`workdir`, default the evaluator's) reference_steps-step DDIM
    images at w, or None without one."""
    workdir = workdir or self.reference_workdir
    if not workdir:
      return None
    entry = self.resolve(Entry(workdir, self.options.reference_steps, "ddim", guidance_weight))
    if entry not in self._samples:
      self._samples[entry] = self._saved_or_drawn(entry)
    return self._samples[entry].images

  def _saved_or_drawn(self, entry: Entry) -> Samples:
    """A resolved entry's samples saved in options.row_dir by an earlier run, else drawn and
    saved there (process 0 writes): an interrupted report does not redraw its references."""
    path = saved_path(self, entry, ".npz")
    if path is not None and path.exists():
      with np.load(io.BytesIO(path.read_bytes())) as saved:
        images, seconds = saved["images"], float(saved["seconds_per_image"])
      saved_config = checkpoint.read_config(entry.workdir, entry.step)
      return Samples(images, seconds, self._sampling_config(saved_config, entry))
    samples = self._draw(entry)
    if path is not None and jax.process_index() == 0:
      data = io.BytesIO()
      np.savez(data, images=samples.images, seconds_per_image=samples.seconds_per_image)
      path.parent.mkdir(parents=True, exist_ok=True)
      atomic_write(path, data.getvalue(), "samples")
    return samples

  def features(self, kind: str, config) -> Optional[Features]:
    """FEATURES[kind] of the config's dataset, built once."""
    dataset = config.data.name
    if (kind, dataset) not in self._features:
      self._features[kind, dataset] = FEATURES[kind](self.options, dataset,
                                                     config.data.get("data_dir", ""))
    return self._features[kind, dataset]

  def row(self, entry: Entry) -> dict:
    entry = self.resolve(entry)
    if "fidelity" in self.options.metrics:
      self.reference(entry.guidance_weight, entry.reference)   # first: it may be this entry
    samples = self.samples(entry)
    row = dict(model=entry.model, workdir=entry.workdir, checkpoint_step=int(entry.step),
               params=entry.which, sampler=entry.sampler, steps=int(entry.num_steps),
               guidance_weight=float(entry.guidance_weight),
               nfe=nfe(samples.config, entry.sampler, int(entry.num_steps)),
               seconds_per_image=float(samples.seconds_per_image),
               num_samples=len(samples.images))
    for name in self.options.metrics:
      row.update(METRICS[name](self, samples.config, samples.images, entry))
    if self.options.grid_dir:
      row["grid"] = os.path.join(self.options.grid_dir, row_name(row) + ".png")
      if jax.process_index() == 0:
        save_grid(samples.images[:self.options.grid_samples], row["grid"])
    return row


@register_metric("fd_dataset")
def fd_dataset(evaluator: Evaluator, config, images, entry: Entry) -> dict:
  """{'FD-<dataset>': FD of the classifier features of `images` to the reference split's,
  'reference_images': that split's size}."""
  features = evaluator.features("classifier", config)
  stats = reference.dataset_stats(features.fn, batches(images, evaluator.options.batch_size))
  return {classifier.metric_name(config.data.name):
          frechet.frechet_distance(*stats, *features.reference),
          "reference_images": features.count}


@register_metric("fidelity")
def fidelity_to_reference(evaluator: Evaluator, config, images, entry: Entry) -> dict:
  """{'fidelity_mse', 'fidelity_psnr'} against the reference samples from the same noise."""
  reference_images = evaluator.reference(entry.guidance_weight, entry.reference)
  if reference_images is None:
    return {}
  f = fidelity.fidelity(images, reference_images)
  return {"fidelity_mse": float(f["mse"]), "fidelity_psnr": float(f["psnr"])}


@register_metric("fid")
def fid_is(evaluator: Evaluator, config, images, entry: Entry) -> dict:
  """{'FID'} (and {'IS', 'IS_std'} when the weights hold the classifier) with the FID Inception."""
  features = evaluator.features("inception", config)
  outs = jax.device_get([features.fn(b) for b in batches(images, INCEPTION_BATCH)])
  logits = (None if outs[0].logits_unbiased is None
            else np.concatenate([o.logits_unbiased for o in outs]))
  return dict(metrics.fid_is_of(np.concatenate([o.pool for o in outs]), logits,
                                features.reference), reference_images=features.count)


def saved_path(evaluator: Evaluator, entry: Entry, suffix: str = ".json"
               ) -> Optional[epath.Path]:
  """<row_dir>/<hash of the resolved entry and the options><suffix> (.json a finished row,
  .npz reference samples), or None without a row_dir."""
  if not evaluator.options.row_dir:
    return None
  key = json.dumps([dataclasses.asdict(evaluator.resolve(entry)),
                    dataclasses.asdict(evaluator.options), evaluator.reference_workdir])
  return epath.Path(evaluator.options.row_dir) / (
      hashlib.sha256(key.encode()).hexdigest()[:20] + suffix)


def evaluate(entries, options: Options = Options(), reference_workdir: str = "",
             mesh=None) -> list[dict]:
  """One row per entry (see the module docstring), in order. With options.row_dir, each row
  (and each fidelity reference's samples) is saved there when done and one saved for the same
  entry and options is reused, so an interrupted evaluation continues where it stopped."""
  evaluator = Evaluator(options, reference_workdir, mesh)
  rows = []
  for i, entry in enumerate(entries):
    path = saved_path(evaluator, entry)
    if path is not None and path.exists():
      rows.append(json.loads(path.read_text()))
      logging.info("evaluated %d/%d (saved in %s): %s", i + 1, len(entries), path, rows[-1])
      continue
    rows.append(evaluator.row(entry))
    if path is not None and jax.process_index() == 0:
      path.parent.mkdir(parents=True, exist_ok=True)
      atomic_write(path, json.dumps(rows[-1]).encode(), "row")
    logging.info("evaluated %d/%d: %s", i + 1, len(entries), rows[-1])
  return rows
