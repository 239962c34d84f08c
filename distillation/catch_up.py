"""Catch-Up Distillation (Shao et al. 2023, arXiv 2305.10769; DESIGN.md 5.6): a velocity model
on the linear flow that distils itself while it learns from data, in one session.

Read off the reference code (shaoshitong/Catch-Up-Distillation, flows.py
`CatchUpFlow.get_train_tuple_{one,two,three}_step` and train_cud_reverse_img_ddp.py; the
paper's catch-up objective and its Runge-Kutta-based multi-step alignment, "Runge-Kutta
12 / 23 / 34" for k = 1 / 2 / 3). Per example, t = e0 + (1 - e0) U, z_t = (1 - t) x + t eps
(distillation.flow_matching), and a catch-up step h = Delta:

  uniform: h ~ U(0, 1/N);  origin: h = 1/N;  rule: h = t/N        (N = cud.num_steps, 16)

The network's k heads (k = cud.order) predict with gradient. Without gradient, from the ONLINE
parameters' main head u (the reference's `ema_z_t` is computed with the online model, not the
EMA), the targets are

  k_1 = u(z_t, t),  v = the Runge-Kutta slope over -h (CATCH_UP_TABLEAUX),
  target_j = u(z_t - j h v, t - j h),  j = 1..k,
  target_j = eps - x  where t < e0 + k h (t - k h would pass the data end),

and L = sum_j MSE(head_j, target_j) + sum_j MSE(head_j, eps - x) (element means, 1:1: the
reference's 0.5 * 2 weights). k_1 is the main head's prediction itself (stop-gradient): the
reference evaluates it again in the same training mode, which is the same value without
dropout. Evaluation times are clamped at e0 as in the reference; the k target evaluations
run as ONE network call on the k-fold batch. Every call of the loss runs in training mode
(dropout on, independent masks), as the reference's model stays in train() for the targets.

Sampling uses head `cud.sample_head` (0 = head k) with `sample.sampler`: euler, heun, rk4 or
ddim (= euler on this process). The reference's learned encoder prior, shake-drop skip
scaling and discrete-time variant are not implemented (DESIGN.md: the prior is off).
"""
import itertools

import jax
import jax.numpy as jnp

from diffusion.processes import broadcast_to
from diffusion.registry import Registry
from distillation.flow_matching import VelocityModel, mse
from sampling.ode import TABLEAUX, Tableau, rk_slope
from training.method import register

# The catch-up Runge-Kutta schemes, as Butcher tableaux on the step -h: order 1 is Euler,
# 2 is Heun (k2 = u(z - h k1, t - h), v = (k1 + k2)/2), 3 the reference's
# k3 = u(z - h (7/4 k1 + 1/4 k2), t - 2h), v = 5/12 k1 + 2/3 k2 - 1/12 k3.
CATCH_UP_TABLEAUX = {
    1: TABLEAUX["euler"],
    2: TABLEAUX["heun"],
    3: Tableau(a=((), (1.0,), (7 / 4, 1 / 4)), b=(5 / 12, 2 / 3, -1 / 12), c=(0.0, 1.0, 2.0)),
}

DELTAS = Registry("cud.delta")
DELTAS.update({
    "uniform": lambda rng, t, n: jax.random.uniform(rng, t.shape) / n,
    "origin": lambda rng, t, n: jnp.ones_like(t) / n,
    "rule": lambda rng, t, n: t / n,
})


def catch_up_steps(rng, t, kind: str, num_steps: int):
  """Delta per example (shape of t): 'uniform' U(0, 1/N), 'origin' 1/N, 'rule' t/N."""
  return DELTAS.lookup(kind)(rng, t, num_steps)


def catch_up_targets(u, z, t, h, order: int, e0: float, k1=None) -> list:
  """[target_1, ..., target_k] before the data-end mask, no gradient; u(z, t) -> velocity.

  v = sum_i b_i k_i with k_i = u(z - h sum_j a_ij k_j, t - c_i h) (CATCH_UP_TABLEAUX[order]),
  target_j = u(z - j h v, max(t - j h, e0)), the k evaluations as one call on the k-fold
  batch; k1 = u(z, t) may be passed (the prediction itself). t, h: shape (B,).
  """
  hz, tz = broadcast_to(h, z), broadcast_to(t, z)
  f = lambda y, s: u(y, jnp.maximum(s.reshape(t.shape), e0))
  k1 = u(z, t) if k1 is None else k1
  v = rk_slope(f, z, tz, -hz, CATCH_UP_TABLEAUX[order], k1)
  js = range(1, order + 1)
  zs = jnp.concatenate([z - j * hz * v for j in js])
  ts = jnp.concatenate([jnp.maximum(t - j * h, e0) for j in js])
  return jax.lax.stop_gradient(jnp.split(u(zs, ts), order))


def data_end_fallback(targets, velocity, keep) -> list:
  """Each target where keep (t >= e0 + k h, shape (B,)), else the ground truth eps - x."""
  keep = broadcast_to(keep, velocity)
  return [jnp.where(keep, target, velocity) for target in targets]


def catch_up_loss(heads, targets, velocity):
  """(L, metrics): L = sum_j MSE(head_j, target_j) + sum_j MSE(head_j, eps - x).

  heads, targets: lists of (B, ...) (targets after `data_end_fallback`); velocity = eps - x."""
  catch_up = sum(mse(p, q) for p, q in zip(heads, targets))
  ground_truth = sum(mse(p, velocity) for p in heads)
  return catch_up + ground_truth, {"catch_up_loss": catch_up, "flow_loss": ground_truth}


@register("catch_up")
class CatchUpDistillation(VelocityModel):
  """One session from data: the catch-up loss on `cud.order` heads (frozen = {})."""

  def __init__(self, config):
    super().__init__(config)
    DELTAS.lookup(config.cud.delta)

  def num_heads(self) -> int:
    order = self.config.cud.order
    if order not in CATCH_UP_TABLEAUX:
      raise ValueError(f"cud.order={order}: choose 1, 2 or 3 (Runge-Kutta 12, 23, 34).")
    return order

  def sample_head(self) -> int:
    head = self.config.cud.sample_head or self.config.cud.order
    if not 1 <= head <= self.config.cud.order:
      raise ValueError(f"cud.sample_head={head} but the network has cud.order="
                       f"{self.config.cud.order} heads: choose 1..{self.config.cud.order} "
                       f"(0 = the last).")
    return head

  def loss(self, params, frozen, batch, rng, stage, ema=None):
    cud = self.config.cud
    data_rng, drop_rng = jax.random.split(rng)   # as FlowMatching.loss: same z_t, same dropout
    h_rng, target_rng = jax.random.split(jax.random.fold_in(rng, 1))
    x, eps, t, z, cond = self.noised(batch, data_rng)
    h = catch_up_steps(h_rng, t, cud.delta, cud.num_steps)
    heads = self.velocities(params, z, t, cond, drop_rng)
    calls = itertools.count()   # an independent dropout key per network call
    u = lambda y, s: self.velocities(params, y, s, _repeat(cond, len(y) // len(z)),
                                     jax.random.fold_in(target_rng, next(calls)))[0]
    targets = catch_up_targets(u, z, t, h, cud.order, cud.e0, k1=heads[0])
    targets = data_end_fallback(targets, eps - x, t >= cud.e0 + cud.order * h)
    loss, metrics = catch_up_loss(heads, targets, eps - x)
    return loss, dict(metrics, loss=loss)


def _repeat(cond, times: int):
  """cond for a batch of `times` stacked copies of the batch."""
  if cond is None or times == 1:
    return cond
  return {k: jnp.concatenate([v] * times) for k, v in cond.items()}
