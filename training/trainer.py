"""The one trainer: any Method, any stage schedule, 1 device to a multi-host pod.

jit over a Mesh: the batch is split over the devices, the state is replicated, or with
`mesh.fsdp` > 1 its large leaves are split along the mesh's 'fsdp' axis (infra/mesh.py).
Steps run to the end of the method's schedule, or to `config.num_train_steps` if smaller; a
restarted run resumes from the latest checkpoint in the workdir, bit for bit (onto the saved
shapes: a distillation's teacher is in the checkpoint, its workdir is not read again).
A SIGTERM saves a checkpoint and stops; `train` then raises `StoppedEarly`. The workdir may
be a bucket (gs://...): every file goes through etils.epath. The jitted update itself, the
state at step 0 and a stage boundary are pure functions in training/step.py.
"""
import bisect
import functools
import json
import signal

import jax
import numpy as np
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from infra import checkpoint
from infra.grid import make_grid, save_grid
from infra.mesh import check_batch_size, make_mesh, shard_batch, with_shardings
from training import data, offline_run
from training.method import get_method
from training.optimizer import make_optimizer
from training.pretrained import load_teacher, run_end
from training.state import TrainState
from training.step import init_state, jit_train_step, next_stage, stage_args, state_layout


class NonFiniteLossError(RuntimeError):
  """Too many non-finite updates in a row: the run is diverging."""


class StoppedEarly(RuntimeError):
  """Training stopped on request (SIGTERM, preemption) before the end of its schedule; the
  checkpoint of the step it stopped at is saved, and running again continues from it."""


class Preemption:
  """Turns SIGTERM into a request to checkpoint and stop at the next step, from its creation
  to `restore()`.

  Nested ones (a pipeline's around its parts' trainers) share one request: a SIGTERM between
  two parts stops the pipeline before the next, one during a part stops that part. The
  outermost starts with no request. Multi-host, jax's preemption sync point makes all hosts
  stop at the same step.
  """
  requested = False   # shared by every Preemption in force
  _in_force = 0

  def __init__(self):
    if Preemption._in_force == 0:
      Preemption.requested = False
    Preemption._in_force += 1
    # Multi-host, jax.distributed's own SIGTERM handler feeds the sync point: keep it.
    self._previous = (signal.signal(signal.SIGTERM, self._handle)
                      if jax.process_count() == 1 else None)

  @staticmethod
  def _handle(signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    Preemption.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return Preemption.requested

  def restore(self):
    Preemption._in_force -= 1
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _stage_bounds(stages):
  """Global step at which each stage starts, and the end of the last one."""
  return np.cumsum([0] + [s.num_updates for s in stages]).tolist()


class Trainer:
  """Builds everything for a run; `run()` trains to the end (or to a preemption). `mesh`:
  default, all devices with `config.mesh.fsdp`; a given mesh is used as it is."""

  def __init__(self, config, workdir: str, mesh=None):
    self.config, self.workdir = config, workdir
    self.mesh = mesh or make_mesh(fsdp=config.mesh.fsdp)
    check_batch_size(self.mesh, config.batch_size)
    self.method = get_method(config)
    # The data first: a missing dataset fails before anything compiles.
    self.data_iter = self._make_data_iterator()
    self.stages = self.method.stages()
    self._stage_args = {}
    self.bounds = _stage_bounds(self.stages)
    self.total_steps = run_end(config)
    if self.total_steps < self.bounds[-1]:
      logging.warning("num_train_steps=%d stops before the end of the schedule (%d steps); "
                      "run again with a larger value to continue.", self.total_steps,
                      self.bounds[-1])
    self.tx = make_optimizer(config.optim)
    self.manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints,
                                           keep_steps=self.bounds[1:],
                                           track_best=config.eval_every_steps > 0)
    latest = self.manager.latest_step()
    if latest is None:
      teacher = (load_teacher(config, self.mesh, self.method.teacher_workdir_key)
                 if self.method.needs_teacher else None)
      keys = jax.random.split(jax.random.PRNGKey(config.seed))
      init = functools.partial(init_state, self.method, self.tx)
      self.shardings = state_layout(config, self.mesh, jax.eval_shape(init, *keys, teacher))
      self.state = jax.jit(init, out_shardings=self.shardings)(*keys, teacher)
    else:   # shapes only: _resume fills them in, without the teacher's workdir
      shapes = self._saved_shapes(latest)
      self.shardings = state_layout(config, self.mesh, shapes)
      self.state = with_shardings(shapes, self.shardings)
    self.step_fn = jit_train_step(self.method, self.tx, config.optim, self.mesh, self.shardings)
    self.next_stage_fn = jax.jit(functools.partial(next_stage, self.method, self.tx),
                                 donate_argnums=0, out_shardings=self.shardings)
    self.sample_fn = jax.jit(self.method.sample, static_argnums=2)
    self.stage_metrics_fn = jax.jit(self.method.stage_metrics)
    self.stopped_early = False
    self._heldout_fn = None
    self._resume()

  def _saved_shapes(self, step) -> TrainState:
    """The TrainState of checkpoint `step` as shapes and dtypes, from its metadata: params,
    EMA and `frozen` as saved, the optimizer state derived from params."""
    saved = checkpoint.state_metadata(self.manager, step)
    shapes = lambda tree: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree,
        is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    params = shapes(saved["params"])
    opt_state = jax.eval_shape(self.tx.init, params)
    return TrainState(step=shapes(saved["step"]), stage_index=shapes(saved["stage_index"]),
                      params=params, ema_params=shapes(saved["ema_params"]),
                      opt_state=opt_state, frozen=shapes(saved["frozen"]),
                      rng=shapes(saved["rng"]), target_params=shapes(saved.get("target_params")))

  def _make_data_iterator(self):
    """The training batches: the dataset's, or only example indices for a data-free method
    (no dataset is opened)."""
    config = self.config
    if self.method.offline_data() is not None:   # offline samples of the teacher
      return offline_run.train_iterator(config, self.workdir)
    if not self.method.needs_data:
      return data.make_index_iterator(config.batch_size)
    iterator = data.make_train_iterator(config.data, config.batch_size, config.seed)
    shape, _, _ = data.dataset_info(config.data)
    if tuple(shape) != tuple(config.data.shape):
      raise ValueError(f"data.shape={tuple(config.data.shape)} but {config.data.name!r} images "
                       f"are {tuple(shape)}: start from that dataset's preset (e.g. "
                       f"--config=configs/teacher.py:{config.data.name}).")
    return iterator

  def _resume(self):
    step, state = checkpoint.restore(self.manager, self.state, self.data_iter)
    if step is None:
      return
    self.state = state
    logging.info("Resumed from %s at step %d.", self.manager.directory, step)

  def stage_args(self, index):
    """The loss's `stage` argument: the stage's args, its length and first step (cached)."""
    if index not in self._stage_args:
      self._stage_args[index] = stage_args(self.stages[index], self.bounds[index],
                                           self.bounds[-1])
    return self._stage_args[index]

  def save(self, step, force=False, metrics=None):
    checkpoint.save(self.manager, step, self.state, self.data_iter, self.config, force=force,
                    metrics=metrics)

  def heldout_batches(self):
    """An iterator over the held-out batches: the offline data's 'heldout' split, else the
    dataset's test split (full batches only, so each shards evenly)."""
    config = self.config
    if self.method.offline_data() is not None:
      return offline_run.heldout_iterator(config, self.workdir)
    if not self.method.needs_data:
      raise ValueError(f"eval_every_steps={config.eval_every_steps}: method {config.method!r} "
                       f"has no held-out data (it trains without a dataset); set it to 0.")
    local = data.local_batch_size(config.batch_size)
    return (b for b in data.make_eval_iterator(config.data, config.batch_size)
            if len(b["label"]) == local)

  def heldout_loss(self, index) -> float:
    """The method's `heldout_loss` of the EMA params, averaged over the held-out batches
    (batch i with key PRNGKey(i), the same at every evaluation)."""
    if self._heldout_fn is None:
      self._heldout_fn = jax.jit(self.method.heldout_loss)
    losses = [self._heldout_fn(self.state.ema_params, self.state.frozen,
                               shard_batch(self.mesh, batch), jax.random.PRNGKey(i),
                               self.stage_args(index))
              for i, batch in enumerate(self.heldout_batches())]
    if not losses:
      raise ValueError(f"The held-out data hold less than one batch of {self.config.batch_size}.")
    return float(np.mean(jax.device_get(losses)))

  def write_heldout(self, writer, step, index) -> dict:
    """{BEST_METRIC: loss} of this step, to TensorBoard and <workdir>/heldout.json."""
    metrics = {checkpoint.BEST_METRIC: self.heldout_loss(index)}
    writer.write_scalars(step, metrics)
    if jax.process_index() == 0:
      path = checkpoint.workdir_path(self.workdir) / "heldout.json"
      table = json.loads(path.read_text()) if path.exists() else {}
      table[str(step)] = metrics[checkpoint.BEST_METRIC]
      path.write_text(json.dumps(table, indent=1))
    return metrics

  def draw_samples(self, step, index) -> np.ndarray:
    """sample.num_samples images of stage `index` (key PRNGKey(step)), on every host.

    Traced under the mesh, so the method's noise, and all it computes, is split over the
    devices (infra.mesh.constrain_batch); the result is gathered to numpy.
    """
    with jax.set_mesh(self.mesh):
      images = self.sample_fn(self.params_for_sampling(), jax.random.PRNGKey(step),
                              self.config.sample.num_samples, self.stage_args(index))
    return multihost_utils.process_allgather(images, tiled=True)

  def write_samples(self, writer, step, index):
    images = self.draw_samples(step, index)
    writer.write_images(step, {"samples": make_grid(images)[None]})
    if jax.process_index() == 0:
      name = self.stages[index].name or "samples"
      save_grid(images, checkpoint.workdir_path(self.workdir) / "samples" /
                f"{name}_step{step:07d}.png")

  def stage_metrics(self, step, index) -> dict:
    """The method's metrics of stage `index` (key PRNGKey(step)) as floats, computed under
    the mesh like `draw_samples`."""
    with jax.set_mesh(self.mesh):
      metrics = self.stage_metrics_fn(self.state.params, self.state.frozen,
                                      jax.random.PRNGKey(step), self.stage_args(index))
    return {k: float(v) for k, v in jax.device_get(metrics).items()}

  def write_stage_metrics(self, writer, step, index):
    """The method's end-of-stage metrics, to TensorBoard and <workdir>/stage_metrics.json."""
    metrics = self.stage_metrics(step, index)
    if not metrics:
      return
    writer.write_scalars(step, metrics)
    if jax.process_index() == 0:
      path = checkpoint.workdir_path(self.workdir) / "stage_metrics.json"
      table = json.loads(path.read_text()) if path.exists() else {}
      table[self.stages[index].name or str(index)] = dict(metrics, step=step)
      path.write_text(json.dumps(table, indent=1))

  def params_for_sampling(self):
    return self.state.ema_params if self.config.sample.use_ema else self.state.params

  def run(self) -> TrainState:
    config = self.config
    writer = metric_writers.create_default_writer(str(checkpoint.workdir_path(self.workdir)),
                                                  just_logging=jax.process_index() > 0)
    step = int(self.state.step)
    if step == 0:
      writer.write_hparams(_flatten(config.to_dict()))
      parameter_overview.log_parameter_overview(self.state.params)
    progress = periodic_actions.ReportProgress(num_train_steps=self.total_steps, writer=writer)
    preemption = Preemption()
    pending, saved, in_row = [], None, None
    stage_index = int(self.state.stage_index)   # tracked on the host: no sync per step
    try:
      while step < self.total_steps:
        index = bisect.bisect_right(self.bounds, step) - 1
        if index != stage_index:
          self.state, stage_index = self.next_stage_fn(self.state, index), index
        batch = shard_batch(self.mesh, next(self.data_iter))
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          self.state, metrics = self.step_fn(self.state, batch, self.stage_args(index))
        # The streak of the previous step, read while this one runs (no sync per step).
        if in_row is not None:
          self._check_finite(step, int(in_row))
        in_row = metrics.pop("nonfinite_in_row")
        in_row.copy_to_host_async()
        step += 1
        pending.append(metrics)
        progress(step)
        stage_end = step == self.bounds[index + 1] or step == self.total_steps
        if step % config.log_every_steps == 0 or stage_end:
          self._log(writer, step, pending)
          pending = []
        if step % config.sample_every_steps == 0 or stage_end:
          self.write_samples(writer, step, index)
        if stage_end:
          self.write_stage_metrics(writer, step, index)
        heldout = None
        if config.eval_every_steps and (step % config.eval_every_steps == 0 or stage_end):
          heldout = self.write_heldout(writer, step, index)
        if step % config.checkpoint_every_steps == 0 or stage_end or heldout:
          self.save(step, metrics=heldout)
          saved = step
        if preemption.should_stop(step) and step < self.total_steps:
          if saved != step:
            self.save(step, force=True)
          logging.warning("Stopped at step %d on request; the checkpoint is saved.", step)
          self.stopped_early = True
          break
      if in_row is not None:
        self._check_finite(step, int(in_row))
    finally:
      preemption.restore()
      self.manager.wait_until_finished()
      writer.flush()
    return self.state

  def _check_finite(self, step, in_row):
    """Raise at the step where the non-finite streak reaches max_nonfinite_in_row."""
    if in_row >= self.config.max_nonfinite_in_row:
      raise NonFiniteLossError(
          f"{in_row} non-finite updates in a row at step {step} (all skipped; max_nonfinite_in_row="
          f"{self.config.max_nonfinite_in_row}): lower optim.lr or check the data. The last "
          f"checkpoint in {self.manager.directory} holds finite parameters.")

  def _log(self, writer, step, pending):
    averaged = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
    total = int(self.state.opt_state.total_notfinite)
    writer.write_scalars(step, dict(averaged, nonfinite_updates=total))


def _flatten(tree, prefix=""):
  """Nested dict -> flat {'a.b': value} with values as str/int/float/bool for hparams."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, bool, str)) else str(v)
  return out


def train(config, workdir: str, mesh=None) -> TrainState:
  """Train `config` in `workdir`, resuming from its latest checkpoint if there is one; raises
  `StoppedEarly` when a SIGTERM stopped it before the end."""
  trainer = Trainer(config, workdir, mesh)
  state = trainer.run()
  if trainer.stopped_early:
    raise StoppedEarly(f"Training in {workdir} stopped at step {int(state.step)} of "
                       f"{trainer.total_steps} on request; its checkpoint is saved: run the "
                       f"same command again to continue.")
  return state
