"""Optimizer: Adam with gradient clipping that skips non-finite updates; the learning
rate and the EMA decay are applied in the train step from the step within the current
stage, so both schedules restart at every stage without recompiling."""
import jax.numpy as jnp
import optax

from diffusion.registry import Registry

# Updates with a NaN or Inf gradient are always skipped; the trainer halts after
# `max_nonfinite_in_row` of them in a row.
_NEVER_ACCEPT_NONFINITE = 2**30


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """clip_by_global_norm -> scale_by_adam, wrapped in apply_if_finite (no lr: see `learning_rate`)."""
  return optax.apply_if_finite(
      optax.chain(optax.clip_by_global_norm(optim_config.grad_clip),
                  optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2)),
      max_consecutive_errors=_NEVER_ACCEPT_NONFINITE)


SCHEDULES = Registry("optim.schedule")
SCHEDULES.update({
    "constant": lambda progress: jnp.ones_like(progress),
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + jnp.cos(jnp.pi * progress)),
})


def learning_rate(optim_config, step_in_stage, stage_updates):
  """lr * min(1, (s + 1) / warmup) * decay(s / stage_updates) at step s of the stage."""
  decay = SCHEDULES.lookup(optim_config.schedule)
  s = jnp.asarray(step_in_stage, jnp.float32)
  warmup = jnp.minimum(1.0, (s + 1.0) / max(optim_config.warmup_steps, 1))
  progress = jnp.clip(s / jnp.maximum(stage_updates, 1), 0.0, 1.0)
  return optim_config.lr * warmup * decay(progress)


def ema_decay(optim_config, step_in_stage):
  """The EMA decay at step s of the stage: optim.ema_decay, or with optim.ema_rampup = r > 0
  the ramp-up of EDM's training loop (Karras et al. 2022): the EMA's half-life is at most
  r * s updates, decay = min(ema_decay, 0.5 ** (1 / (r * s))), 0 at s = 0 (the EMA starts
  at the params), so a short run's EMA does not keep its initialisation (a fixed 0.999 keeps
  0.999 ** 1000 = 37% of it after 1k updates)."""
  if optim_config.ema_rampup <= 0:
    return optim_config.ema_decay
  half_life = optim_config.ema_rampup * jnp.asarray(step_in_stage, jnp.float32)
  return jnp.minimum(optim_config.ema_decay, 0.5 ** (1.0 / half_life))   # 0.5 ** inf = 0
