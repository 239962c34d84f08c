"""The jitted update and what surrounds it, as pure functions over a TrainState: one train
step (loss and gradient, Adam skipped on a non-finite gradient, the sampling EMA and the
method's target EMA), the state at step 0, its layout on a mesh, and a stage boundary."""
import functools

import jax
import jax.numpy as jnp
import optax

from infra.mesh import replicated, state_shardings
from training.optimizer import ema_decay, learning_rate
from training.state import TrainState


def train_step(method, tx, optim_config, state: TrainState, batch, stage):
  """One update: loss and gradient, Adam (skipped if non-finite), EMA, metrics."""
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(
      state.params, state.frozen, batch, rng, stage,
      ema=state.ema_params if state.target_params is None else state.target_params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # The lr schedule (warm-up, decay) restarts with each stage only if Adam does.
  lr = (learning_rate(optim_config, state.step - stage["first_step"], stage["num_updates"])
        if method.restart_at_stage else
        learning_rate(optim_config, state.step, stage["run_updates"]))
  scales = method.lr_scales(state.params)
  if scales is None:
    updates = jax.tree.map(lambda u: -lr * u, updates)
  else:
    updates = jax.tree.map(lambda u, f: -lr * f * u, updates, scales)
  params = optax.apply_updates(state.params, updates)
  finite = opt_state.last_finite
  ema_step = state.step - (stage["first_step"] if method.restart_at_stage else 0)
  ema = ema_update(state.ema_params, params, ema_decay(optim_config, ema_step), finite)
  target = (None if state.target_params is None else
            ema_update(state.target_params, params, method.target_ema_decay(), finite))
  metrics = dict(metrics, loss=loss, lr=lr, grad_norm=optax.tree.norm(grads),
                 nonfinite_in_row=opt_state.notfinite_count)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state, target_params=target)
  return new_state, metrics


def ema_update(ema, params, decay, finite):
  """decay * ema + (1 - decay) * params, or ema unchanged after a skipped (non-finite) update."""
  return jax.tree.map(lambda e, p: jnp.where(finite, decay * e + (1.0 - decay) * p, e),
                      ema, params)


def init_state(method, tx, init_rng, state_rng, teacher_params):
  params = method.init(init_rng, teacher_params)
  return TrainState(step=jnp.zeros([], jnp.int32), stage_index=jnp.zeros([], jnp.int32),
                    params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=tx.init(params), frozen=method.init_frozen(teacher_params),
                    rng=state_rng,
                    target_params=(None if method.target_ema_decay() is None
                                   else jax.tree.map(jnp.copy, params)))


def state_layout(config, mesh, shapes):
  """The shardings of a train state (shapes) on `mesh` by the config's fsdp rule."""
  return state_shardings(mesh, shapes, config.mesh.fsdp_min_size)


def jit_train_step(method, tx, optim_config, mesh, shardings):
  """`train_step` jitted: the state donated and laid out as `shardings`, metrics replicated."""
  return jax.jit(functools.partial(train_step, method, tx, optim_config), donate_argnums=0,
                 out_shardings=(shardings, replicated(mesh)))


def stage_args(stage, first_step: int, run_updates: int) -> dict:
  """The loss's `stage` argument: the stage's args, its length, its first step and the
  length of the whole run."""
  return dict(stage.jax_args(), num_updates=jnp.asarray(stage.num_updates),
              first_step=jnp.asarray(first_step), run_updates=jnp.asarray(run_updates))


def next_stage(method, tx, state: TrainState, index):
  """Stage boundary: the method updates `frozen` (student -> teacher); Adam and the sampling
  EMA restart if `method.restart_at_stage`; the target EMA never does."""
  state = state.replace(stage_index=jnp.asarray(index, jnp.int32),
                        frozen=method.next_frozen(state.frozen, state.params))
  if not method.restart_at_stage:
    return state
  return state.replace(ema_params=jax.tree.map(jnp.copy, state.params),
                       opt_state=tx.init(state.params))
