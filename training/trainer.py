"""The one trainer: any Method, any stage schedule, 1 device to a multi-host pod.

jit over a Mesh: the batch is sharded along 'data', the state is replicated.
Steps run to the end of the method's schedule, or to `config.num_train_steps` if smaller; a
restarted run resumes from the latest checkpoint in the workdir, bit for bit.
"""
import bisect
import functools
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, parameter_overview, periodic_actions
from jax.experimental import multihost_utils

from eval.grid import make_grid, save_grid
from training import checkpoint, data
from training.mesh import check_batch_size, make_mesh, replicated, shard_batch
from training.method import get_method
from training.optimizer import learning_rate, make_optimizer
from training.state import TrainState
from training.pretrained import load_teacher


class NonFiniteLossError(RuntimeError):
  """Too many non-finite updates in a row: the run is diverging."""


class Preemption:
  """Turns SIGTERM into a request to checkpoint and stop at the next step.

  Multi-host, jax's preemption sync point makes all hosts stop at the same step.
  """

  def __init__(self):
    self.requested = False
    # Multi-host, jax.distributed's own SIGTERM handler feeds the sync point: keep it.
    self._previous = (signal.signal(signal.SIGTERM, self._handle)
                      if jax.process_count() == 1 else None)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _stage_bounds(stages):
  """Global step at which each stage starts, and the end of the last one."""
  return np.cumsum([0] + [s.num_updates for s in stages]).tolist()


def train_step(method, tx, optim_config, ema_decay, state: TrainState, batch, stage):
  """One update: loss and gradient, Adam (skipped if non-finite), EMA, metrics."""
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(
      state.params, state.frozen, batch, rng, stage, ema=state.ema_params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = learning_rate(optim_config, state.step - stage["first_step"], stage["num_updates"])
  scales = method.lr_scales(state.params)
  if scales is None:
    updates = jax.tree.map(lambda u: -lr * u, updates)
  else:
    updates = jax.tree.map(lambda u, f: -lr * f * u, updates, scales)
  params = optax.apply_updates(state.params, updates)
  finite = opt_state.last_finite
  ema = jax.tree.map(lambda e, p: jnp.where(finite, ema_decay * e + (1.0 - ema_decay) * p, e),
                     state.ema_params, params)
  metrics = dict(metrics, loss=loss, lr=lr, grad_norm=optax.tree.norm(grads))
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state)
  return new_state, metrics


def init_state(method, tx, init_rng, state_rng, teacher_params):
  params = method.init(init_rng, teacher_params)
  return TrainState(step=jnp.zeros([], jnp.int32), stage_index=jnp.zeros([], jnp.int32),
                    params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), frozen=method.init_frozen(teacher_params),
                    rng=state_rng)


def _next_stage(method, tx, state: TrainState, index):
  """Stage boundary: the method updates `frozen` (student -> teacher); Adam and the EMA restart."""
  return state.replace(stage_index=jnp.asarray(index, jnp.int32),
                       frozen=method.next_frozen(state.frozen, state.params),
                       ema_params=jax.tree.map(jnp.copy, state.params),
                       opt_state=tx.init(state.params))


class Trainer:
  """Builds everything for a run; `run()` trains to the end (or to a preemption)."""

  def __init__(self, config, workdir: str, mesh=None):
    self.config, self.workdir = config, workdir
    self.mesh = mesh or make_mesh()
    check_batch_size(self.mesh, config.batch_size)
    self.method = get_method(config)
    # The data first: a missing dataset fails before anything compiles.
    self.data_iter = self._make_data_iterator()
    self.stages = self.method.stages()
    self._stage_args = {}
    self.bounds = _stage_bounds(self.stages)
    self.total_steps = self.bounds[-1]
    if 0 < config.num_train_steps < self.bounds[-1]:
      self.total_steps = config.num_train_steps
      logging.warning("num_train_steps=%d stops before the end of the schedule (%d steps); "
                      "run again with a larger value to continue.", self.total_steps,
                      self.bounds[-1])
    self.tx = make_optimizer(config.optim)
    rep = replicated(self.mesh)
    teacher = load_teacher(config, self.mesh) if self.method.needs_teacher else None
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    self.state = jax.jit(functools.partial(init_state, self.method, self.tx),
                         out_shardings=rep)(init_rng, state_rng, teacher)
    self.step_fn = jax.jit(
        functools.partial(train_step, self.method, self.tx, config.optim, config.optim.ema_decay),
        donate_argnums=0, out_shardings=(rep, rep))
    self.next_stage_fn = jax.jit(functools.partial(_next_stage, self.method, self.tx),
                                 donate_argnums=0, out_shardings=rep)
    self.sample_fn = jax.jit(self.method.sample, static_argnums=2)
    self.stage_metrics_fn = jax.jit(self.method.stage_metrics)
    self.manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints,
                                           keep_steps=self.bounds[1:])
    self._resume()

  def _make_data_iterator(self):
    """The training batches: the dataset's, or only example indices for a data-free method
    (no dataset is opened)."""
    config = self.config
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
      stage = self.stages[index]
      self._stage_args[index] = dict(stage.jax_args(), num_updates=jnp.asarray(stage.num_updates),
                                     first_step=jnp.asarray(self.bounds[index]))
    return self._stage_args[index]

  def save(self, step, force=False):
    checkpoint.save(self.manager, step, self.state, self.data_iter, self.config, force=force)

  def write_samples(self, writer, step, index):
    images = self.sample_fn(self.params_for_sampling(), jax.random.PRNGKey(step),
                            self.config.sample.num_samples, self.stage_args(index))
    images = np.asarray(jax.device_get(images))
    writer.write_images(step, {"samples": make_grid(images)[None]})
    if jax.process_index() == 0:
      name = self.stages[index].name or "samples"
      save_grid(images, os.path.join(self.workdir, "samples", f"{name}_step{step:07d}.png"))

  def write_stage_metrics(self, writer, step, index):
    """The method's end-of-stage metrics, to TensorBoard and <workdir>/stage_metrics.json."""
    metrics = self.stage_metrics_fn(self.state.params, self.state.frozen,
                                    jax.random.PRNGKey(step), self.stage_args(index))
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not metrics:
      return
    writer.write_scalars(step, metrics)
    if jax.process_index() == 0:
      path = os.path.join(self.workdir, "stage_metrics.json")
      table = json.load(open(path)) if os.path.exists(path) else {}
      table[self.stages[index].name or str(index)] = dict(metrics, step=step)
      with open(path, "w") as f:
        json.dump(table, f, indent=1)

  def params_for_sampling(self):
    return self.state.ema_params if self.config.sample.use_ema else self.state.params

  def run(self) -> TrainState:
    config = self.config
    writer = metric_writers.create_default_writer(self.workdir,
                                                  just_logging=jax.process_index() > 0)
    step = int(self.state.step)
    if step == 0:
      writer.write_hparams(_flatten(config.to_dict()))
      parameter_overview.log_parameter_overview(self.state.params)
    progress = periodic_actions.ReportProgress(num_train_steps=self.total_steps, writer=writer)
    preemption = Preemption()
    pending, saved = [], None
    stage_index = int(self.state.stage_index)   # tracked on the host: no sync per step
    try:
      while step < self.total_steps:
        index = bisect.bisect_right(self.bounds, step) - 1
        if index != stage_index:
          self.state, stage_index = self.next_stage_fn(self.state, index), index
        batch = shard_batch(self.mesh, next(self.data_iter))
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          self.state, metrics = self.step_fn(self.state, batch, self.stage_args(index))
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
        if step % config.checkpoint_every_steps == 0 or stage_end:
          self.save(step)
          saved = step
        if preemption.should_stop(step):
          if saved != step:
            self.save(step, force=True)
          logging.warning("Stopped at step %d on request; the checkpoint is saved.", step)
          break
    finally:
      preemption.restore()
      self.manager.wait_until_finished()
      writer.flush()
    return self.state

  def _log(self, writer, step, pending):
    averaged = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
    opt_state = self.state.opt_state
    in_row, total = int(opt_state.notfinite_count), int(opt_state.total_notfinite)
    writer.write_scalars(step, dict(averaged, nonfinite_updates=total))
    if in_row >= self.config.max_nonfinite_in_row:
      raise NonFiniteLossError(
          f"{in_row} non-finite updates in a row at step {step} (all skipped; max_nonfinite_in_row="
          f"{self.config.max_nonfinite_in_row}): lower optim.lr or check the data. The last "
          f"checkpoint in {self.manager.directory} holds finite parameters.")


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
  """Train `config` in `workdir`, resuming from its latest checkpoint if there is one."""
  return Trainer(config, workdir, mesh).run()
